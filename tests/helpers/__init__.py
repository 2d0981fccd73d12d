"""What several test files share: sample data and images (``data``, ``inference``), training runs
through the ``basicsr`` command (``train``, ``dist_worker``), small networks and checkpoint files
(``networks``), fast-path vs reference comparisons (``equivalence``) and the independent re-implementation
of the spec that the architecture is checked against (``elan_spec``, following ``docs/elan_spec.md``)."""
