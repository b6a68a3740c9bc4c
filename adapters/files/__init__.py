"""The files side: walk a folder, store what changed as trees, restore and check files."""
