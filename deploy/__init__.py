"""The deploy folder: containers, host bootstrap, Compute Nest (ROS) and Terraform, offline checks."""
