"""The `verl.plugins` entry point: `import verl` imports this module in every process.

verl swallows exceptions raised here (DEBUG log only), so `python -m srpo_verl check` re-runs the
same steps loudly. The CPU backend goes first (its patches must precede any import of verl's
engine workers) and is activated only when explicitly requested (see `srpo_verl.cpu`), never
because a process happens to see no GPU.
"""

from srpo_verl import cpu
from srpo_verl.integration.registrations import register

cpu.activate_if_requested()
register()
