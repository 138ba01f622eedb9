"""Demonstrations that need more than one package: the digits demo's data *and* its digits-FID classifier and
reference statistics (:mod:`lit_nat.demos.digits`). They sit above ``data`` and ``metrics``, which never import them;
the DataModule reaches a preparation by name through :data:`lit_nat.data.datamodule.PREPARATIONS`."""
