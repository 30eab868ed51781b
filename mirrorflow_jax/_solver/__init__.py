"""The toolkit's solvers: structured stiff solvers for steepest flows, their shared base class
and linear algebra, and the automatic choice."""
