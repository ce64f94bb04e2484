output "endpoint" {
  description = "The MusicGen page over HTTPS (user \"musicgen\", the page password), reachable from page_access_cidr only."
  value       = "https://${var.domain_name != "" ? var.domain_name : alicloud_instance.gpu.public_ip}/"
  depends_on  = [alicloud_ecs_invocation.wait_ready]
}

output "api_endpoint" {
  description = "gRPC over TLS for the CLI and the Python client (with the API token); HTTP: https://<host>/v2/..."
  value       = "grpcs://${var.domain_name != "" ? var.domain_name : alicloud_instance.gpu.public_ip}:443"
  depends_on  = [alicloud_ecs_invocation.wait_ready]
}

output "page_user" {
  description = "User name of the page's basic auth."
  value       = "musicgen"
}

output "instance_id" {
  description = "The GPU instance."
  value       = alicloud_instance.gpu.id
}
