"""matloop: closed-loop inverse design of inorganic crystals.

Importing the package is cheap; heavy libraries (torch, pymatgen, prefect) load lazily in
the modules that need them.
"""

__version__ = "0.1.0"
