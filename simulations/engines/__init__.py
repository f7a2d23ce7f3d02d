"""The engines that run one federation on one machine: in-process (with its fork server) and Ray."""
