"""The active-learning loop: a round (Algorithm 2 around Algorithm 1), its typed state and
config, the selection strategies, the oracles and the Label Studio hand-off.

Importing this package loads nothing: ``config``, ``state``, ``strategies`` and ``selection`` are
torch-free (the command line checks settings with them before it loads torch); ``round`` and the
modules it uses need torch.
"""
