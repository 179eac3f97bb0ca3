"""Packaging for Party: the `party` package and the `party` console script."""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "party" / "__init__.py").read_text())[1]
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="party",
    version=version,
    description="A job-queue daemon: tasks over HTTP, run by a post-fork worker pool",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "bench*"]),
    # The dashboard's templates and static files (party/server/dashboard.py) ship with the code.
    package_data={"party.server": ["templates/*.html", "static/*"]},
    install_requires=requirements,
    entry_points={"console_scripts": ["party=party.cli:main"]},
)
