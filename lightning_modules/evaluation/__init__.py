"""Evaluation: the papers' protocols, the published numbers and the report tables (layer 3).

It sits between the models (``backbone``) and the LightningModules: it may import
``utils``, ``datamodules`` and ``backbone``, never a LightningModule (``tests/test_layout.py``).

* ``scene_metrics``, ``scene``, ``tz``, ``scene_report``: paper 000 (Fig. 3, sprite analogies,
  §4.6 T_Z analysis) for ``EquivariantSceneModule``'s test stage and ``python -m lightning_modules.tz_analysis``;
* ``sequence_metrics``, ``disentanglement``, ``motion``, ``motion_report``: paper 004 (Tables 1
  and 2, the disentanglement diagnostics) for ``HamiltonianMotionModule``'s val/test stages;
* ``published``: the papers' and peers' numbers.
"""
