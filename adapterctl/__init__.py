"""`adapterctl`: the command line for deploying and watching LoRA adapter rollouts (devhost or Azure)."""
