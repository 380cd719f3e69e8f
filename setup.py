from setuptools import find_packages, setup

setup(
    name="osmedseg",
    version="0.1.0",
    description="One-shot 3D medical image segmentation: one labeled atlas + unlabeled volumes -> a trained segmenter",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["osmedseg", "osmedseg.*"]),
    install_requires=[
        "torch>=2.1",
        "SimpleITK>=2.2",
        "nibabel>=5.0",
        "numpy>=1.24",
        "scipy>=1.10",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "tqdm>=4.60",
        "matplotlib>=3.6",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "osm_make_demo=osmedseg.cli.make_demo:main",
            "osm_plan_and_preprocess=osmedseg.cli.plan_and_preprocess:main",
            "osm_evaluate=osmedseg.cli.evaluate:main",
            "osm_overlay=osmedseg.cli.overlay:main",
            "osm_convert=osmedseg.cli.convert:main",
            "osm_train=osmedseg.cli.train:main",
            "osm_predict=osmedseg.cli.predict:main",
        ],
    },
)
