# One GPU host in a new VPC, bootstrapped by deploy/host/bootstrap.sh through cloud-init, the page
# (port 80) open to one CIDR. Terraform waits for readiness with a Cloud Assistant invocation of
# deploy/host/wait-ready.sh: the counterpart of the ROS WaitCondition.

locals {
  # Non-secret settings for the bootstrap (parsed as KEY=VALUE, never sourced).
  deploy_env = join("\n", [
    "MUSICGEN_CHECKPOINT=${var.checkpoint}",
    "MUSICGEN_PRECISION=fp16",
    "MUSICGEN_SOURCE_REPO=${var.source_repository_url}",
    "MUSICGEN_SOURCE_REF=${var.source_ref}",
    "MUSICGEN_SOURCE_DIR=/opt/musicgen/src",
    "MUSICGEN_PAGE_PORT=80",
    "MUSICGEN_PAGE_PASSWORD_FILE=/etc/musicgen/page-password",
    "MUSICGEN_READY_TIMEOUT=${var.ready_timeout}",
    "",
  ])

  # Everything is base64 in the cloud-config, so no value can break its YAML.
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    deploy_env_b64    = base64encode(local.deploy_env)
    page_password_b64 = base64encode(var.page_password)
    bootstrap_b64     = filebase64("${path.module}/../host/bootstrap.sh")
    unit_b64          = filebase64("${path.module}/../host/systemd/musicgen-bootstrap.service")
  })
}

data "alicloud_images" "ubuntu" {
  owners        = "system"
  name_regex    = "^ubuntu_22_04_x64_20G_alibase_"
  most_recent   = true
  instance_type = var.instance_type
}

resource "alicloud_vpc" "main" {
  vpc_name   = var.name
  cidr_block = var.vpc_cidr
}

resource "alicloud_vswitch" "main" {
  vswitch_name = var.name
  vpc_id       = alicloud_vpc.main.id
  cidr_block   = var.vswitch_cidr
  zone_id      = var.zone_id
}

resource "alicloud_security_group" "main" {
  security_group_name = var.name
  description         = "MusicGen page (port 80) from one CIDR; nothing else is open."
  vpc_id              = alicloud_vpc.main.id
}

resource "alicloud_security_group_rule" "page" {
  type              = "ingress"
  ip_protocol       = "tcp"
  nic_type          = "intranet"
  policy            = "accept"
  port_range        = "80/80"
  priority          = 1
  security_group_id = alicloud_security_group.main.id
  cidr_ip           = var.page_access_cidr
  description       = "MusicGen page (HTTP basic auth)"
}

resource "alicloud_instance" "gpu" {
  instance_name              = var.name
  host_name                  = var.name
  availability_zone          = var.zone_id
  instance_type              = var.instance_type
  image_id                   = data.alicloud_images.ubuntu.images[0].id
  vswitch_id                 = alicloud_vswitch.main.id
  security_groups            = [alicloud_security_group.main.id]
  system_disk_category       = "cloud_essd"
  system_disk_size           = var.system_disk_size
  internet_charge_type       = "PayByTraffic"
  internet_max_bandwidth_out = 10
  instance_charge_type       = var.pay_type
  period_unit                = var.pay_type == "PrePaid" ? "Month" : null
  period                     = var.pay_type == "PrePaid" ? var.pay_period : null
  password                   = var.instance_password
  user_data                  = base64encode(local.user_data)
}

resource "alicloud_ecs_command" "wait_ready" {
  name        = "${var.name}-wait-ready"
  description = "Block until the MusicGen bootstrap reports success or failure."
  type        = "RunShellScript"
  timeout     = var.ready_timeout + 60
  working_dir = "/root"
  command_content = base64encode(join("\n", [
    "export MUSICGEN_WAIT_TIMEOUT=${var.ready_timeout}",
    file("${path.module}/../host/wait-ready.sh"),
  ]))
}

resource "alicloud_ecs_invocation" "wait_ready" {
  command_id  = alicloud_ecs_command.wait_ready.id
  instance_id = [alicloud_instance.gpu.id]

  timeouts {
    create = "100m"
  }
}
