"""The one place Graflow's version is written.

Every wheel (``./pants package ::`` reads it through the in-repo Pants plugin), ``graflow --version``
and every service's start-up log line take it from here: PEXes carry no package metadata for our
own code, so nothing may ask ``importlib.metadata`` for it.
"""

__version__ = "0.10.0"
