output "endpoint" {
  description = "The MusicGen page (user \"musicgen\", the page password), reachable from page_access_cidr only."
  value       = "http://${alicloud_instance.gpu.public_ip}/"
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
