"""Support of the scheduler's own tests: spec and outcome builders, downstream test doubles, run
harnesses and helpers for a started scheduler. Test utilities: no PEX or wheel carries them."""
