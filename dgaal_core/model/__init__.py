"""The DGAAL networks and their training in PyTorch: configuration (torch-free), networks,
losses, Algorithm 1 and co-evolution, the task model T, checkpoints."""
