"""Assets, dataset generators and LightningDataModules (see ``base.py`` for the contracts)."""
