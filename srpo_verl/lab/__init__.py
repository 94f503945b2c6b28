"""The lab: helpers shared by tests/ and scripts/ (benchmarks, probes, CUDA emulation, reference cases).

Importable so that neither folder reaches into the other by path; the plugin and the demo never
import it (tests/integration/test_import_graph.py holds both rules). Nothing here runs at import.

* `engine_update` — one micro-batch's SRPO update on packed logits as verl's engine computes it.
* `loss_case` — a hand-built no-padding micro-batch, the engine's call sequence, a float64 reference.
* `peak_memory` — peak device or process memory of a block of code.
* `ranks` — a probe script run as several gloo ranks on this host.
* `srpo_update` — one SRPO update through verl's worker and engine, and its float64 reference.
* `step_costs` — the step benchmarks' round-robin timing, phase table and SRPO's cost bound.
* `virtual_cuda` — CUDA device semantics and flash-attn's in-place cross-entropy on a CPU torch.
"""
