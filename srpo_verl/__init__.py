"""SRPO (Sample-Routed Policy Optimization, arXiv 2604.02288) for verl.

`srpo_verl.core_algos` holds the method's math as pure tensor functions and imports no verl.
Everything that touches verl lives in `srpo_verl.integration` (registrations, trainer, loss,
EMA teacher) and `srpo_verl.cpu` (the opt-in CPU backend).
"""

__version__ = "0.1.0"

# The verl release this plugin is written and tested against: the one source of the pin (setup.py
# reads this line; the SRPO trainer and the CPU backend refuse any other installed verl).
SUPPORTED_VERL = "0.9.1"
