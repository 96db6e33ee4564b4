"""Workflow graphs, pure Python without I/O: a submitted ``WorkflowSpec`` validated and compiled
into an immutable ``Plan`` (compiler, edges, plan), what an outcome's directives ask of the
``apply_outcome`` script (directives), and the form of nodes added at run time (dynamic)."""
