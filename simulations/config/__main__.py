"""``python -m dpfl.simulations.config --pyproject | --markdown``: print the config table for pyproject or README."""

import sys

from dpfl.simulations.config.options import markdown_table, pyproject_table

if "--pyproject" in sys.argv:
    print(pyproject_table())
if "--markdown" in sys.argv:
    print(markdown_table())
