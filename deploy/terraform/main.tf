# One GPU host in a new VPC, bootstrapped by deploy/host/bootstrap.sh through cloud-init, HTTPS
# (443, and 80 redirecting) open to one CIDR. Terraform waits for readiness with a Cloud Assistant
# invocation of deploy/host/wait-ready.sh: the counterpart of the ROS WaitCondition.
# Secrets (page password, API token) are OOS encrypted parameters that the instance reads through
# its RAM role: the user data and the command content carry only their names.

locals {
  secret_prefix = "musicgen-${var.name}"

  # Non-secret settings for the bootstrap (parsed as KEY=VALUE, never sourced).
  deploy_env = join("\n", [
    "MUSICGEN_CHECKPOINT=${var.checkpoint}",
    "MUSICGEN_PRECISION=fp16",
    "MUSICGEN_SOURCE_REPO=${var.source_repository_url}",
    "MUSICGEN_SOURCE_REF=${var.source_ref}",
    "MUSICGEN_SOURCE_DIR=/opt/musicgen/src",
    "MUSICGEN_PAGE_PORT=80",
    "MUSICGEN_HTTPS_PORT=443",
    # empty without a domain: the bootstrap uses the instance's public IP (metadata service)
    "MUSICGEN_SITE_HOST=${var.domain_name}",
    "MUSICGEN_TLS_MODE=${var.domain_name != "" ? "acme" : "internal"}",
    "MUSICGEN_PAGE_PASSWORD_FILE=/etc/musicgen/page-password",
    "MUSICGEN_OOS_REGION=${var.region}",
    "MUSICGEN_SECRET_PAGE_PASSWORD=${alicloud_oos_secret_parameter.page_password.secret_parameter_name}",
    "MUSICGEN_SECRET_API_TOKEN=${alicloud_oos_secret_parameter.api_token.secret_parameter_name}",
    "MUSICGEN_READY_TIMEOUT=${var.ready_timeout}",
    "",
  ])

  # Everything is base64 in the cloud-config, so no value can break its YAML.
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    deploy_env_b64 = base64encode(local.deploy_env)
    bootstrap_b64  = filebase64("${path.module}/../host/bootstrap.sh")
    unit_b64       = filebase64("${path.module}/../host/systemd/musicgen-bootstrap.service")
  })
}

data "alicloud_account" "current" {}

resource "alicloud_oos_secret_parameter" "page_password" {
  secret_parameter_name = "${local.secret_prefix}-page-password"
  value                 = var.page_password
  type                  = "Secret"
  description           = "MusicGen page password (read once by the instance's bootstrap)"
}

resource "alicloud_oos_secret_parameter" "api_token" {
  secret_parameter_name = "${local.secret_prefix}-api-token"
  value                 = var.api_token
  type                  = "Secret"
  description           = "MusicGen API token (read once by the instance's bootstrap, stored there hashed)"
}

# The instance's role: read these two secret parameters, nothing else.
resource "alicloud_ram_role" "instance" {
  name        = "${var.name}-musicgen-instance"
  description = "Lets the MusicGen instance read its own secret parameters."
  document = jsonencode({
    Version = "1"
    Statement = [{
      Action    = "sts:AssumeRole"
      Effect    = "Allow"
      Principal = { Service = ["ecs.aliyuncs.com"] }
    }]
  })
}

resource "alicloud_ram_policy" "read_secrets" {
  policy_name = "${var.name}-musicgen-read-secrets"
  description = "Read the MusicGen deployment's secret parameters."
  policy_document = jsonencode({
    Version = "1"
    Statement = [
      {
        Effect = "Allow"
        Action = ["oos:GetSecretParameter"]
        Resource = [
          "acs:oos:${var.region}:${data.alicloud_account.current.id}:secretparameter/${alicloud_oos_secret_parameter.page_password.secret_parameter_name}",
          "acs:oos:${var.region}:${data.alicloud_account.current.id}:secretparameter/${alicloud_oos_secret_parameter.api_token.secret_parameter_name}",
        ]
      },
      {
        # the parameters are encrypted with the account's OOS service key; decrypting needs this
        Effect   = "Allow"
        Action   = ["kms:GetSecretValue", "kms:Decrypt"]
        Resource = ["*"]
      },
    ]
  })
}

resource "alicloud_ram_role_policy_attachment" "read_secrets" {
  policy_name = alicloud_ram_policy.read_secrets.policy_name
  policy_type = "Custom"
  role_name   = alicloud_ram_role.instance.name
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
  description         = "MusicGen HTTPS (443) and its redirect (80) from one CIDR; nothing else is open."
  vpc_id              = alicloud_vpc.main.id
}

resource "alicloud_security_group_rule" "https" {
  type              = "ingress"
  ip_protocol       = "tcp"
  nic_type          = "intranet"
  policy            = "accept"
  port_range        = "443/443"
  priority          = 1
  security_group_id = alicloud_security_group.main.id
  cidr_ip           = var.page_access_cidr
  description       = "MusicGen page and API over TLS"
}

resource "alicloud_security_group_rule" "http_redirect" {
  type              = "ingress"
  ip_protocol       = "tcp"
  nic_type          = "intranet"
  policy            = "accept"
  port_range        = "80/80"
  priority          = 1
  security_group_id = alicloud_security_group.main.id
  cidr_ip           = var.page_access_cidr
  description       = "redirect to HTTPS (and the ACME HTTP challenge)"
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
  role_name                  = alicloud_ram_role.instance.name
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
  # the bootstrap reads its secrets through the role
  depends_on = [alicloud_ram_role_policy_attachment.read_secrets]

  timeouts {
    create = "100m"
  }
}
