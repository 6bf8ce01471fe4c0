"""What the user brings: a base model (``models``), training/measurement data (``tasks``) and the readers of
data files and hub datasets (``readers``). Importing the package loads none of them."""
