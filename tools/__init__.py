"""Static tooling: compile every kernel configuration for sm_90 and read its SASS, without a GPU."""
