"""The jobs' Beam graphs, built from the layers below: encode, rerank, mine."""
