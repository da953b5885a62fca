"""The imperative shell: one module per outside system (docker, git, the state directory)."""
