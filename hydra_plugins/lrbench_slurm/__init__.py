"""lrbench's SLURM launcher for Hydra (``launcher=submitit_slurm``); see :mod:`.slurm_launcher`."""
