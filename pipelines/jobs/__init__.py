"""The jobs: each one's config, result and ``execute`` (check -> build -> run -> report).

The command line of each job is ``pipelines/<job>.py``; it resolves what a
user left out (the default cross-encoder) and calls ``execute``.
"""
