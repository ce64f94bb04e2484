# The same parameters as the Compute Nest (ROS) template, with the same ranges.

variable "region" {
  description = "Alibaba Cloud region, e.g. cn-hangzhou or ap-southeast-1."
  type        = string
  default     = "cn-hangzhou"
}

variable "name" {
  description = "Service instance name: names the VPC, vSwitch, security group and instance."
  type        = string
  default     = "musicgen"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "3-32 characters: lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "pay_type" {
  description = "Billing method: PostPaid (pay-as-you-go) or PrePaid (subscription)."
  type        = string
  default     = "PostPaid"

  validation {
    condition     = contains(["PostPaid", "PrePaid"], var.pay_type)
    error_message = "pay_type must be PostPaid or PrePaid."
  }
}

variable "pay_period" {
  description = "Subscription length in months (PrePaid only)."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 2, 3, 6, 12], var.pay_period)
    error_message = "pay_period must be 1, 2, 3, 6 or 12 (months)."
  }
}

variable "zone_id" {
  description = "Zone of the vSwitch and the instance; it must offer the chosen GPU instance type."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}-[a-z0-9-]+$", var.zone_id))
    error_message = "zone_id looks like cn-hangzhou-i."
  }
}

variable "vpc_cidr" {
  description = "VPC CIDR block (a private range)."
  type        = string
  default     = "192.168.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && can(regex("^(10\\.|172\\.(1[6-9]|2[0-9]|3[01])\\.|192\\.168\\.)", var.vpc_cidr))
    error_message = "vpc_cidr must be a private IPv4 CIDR (10/8, 172.16/12, 192.168/16 or a subnet)."
  }
}

variable "vswitch_cidr" {
  description = "vSwitch CIDR block, inside vpc_cidr."
  type        = string
  default     = "192.168.1.0/24"

  validation {
    condition     = can(cidrhost(var.vswitch_cidr, 0))
    error_message = "vswitch_cidr must be an IPv4 CIDR."
  }
}

variable "instance_type" {
  description = "GPU instance type: ecs.gn7i (A10, 24 GB) or ecs.gn6i (T4, 16 GB)."
  type        = string
  default     = "ecs.gn7i-c8g1.2xlarge"

  validation {
    condition     = can(regex("^ecs\\.gn(6i|7i)-[a-z0-9]+\\.[0-9]*x?large$", var.instance_type))
    error_message = "instance_type must be of the ecs.gn6i or ecs.gn7i family."
  }
}

variable "system_disk_size" {
  description = "ESSD system disk in GB (60-500)."
  type        = number
  default     = 100

  validation {
    condition     = var.system_disk_size >= 60 && var.system_disk_size <= 500
    error_message = "system_disk_size must be between 60 and 500 GB."
  }
}

variable "instance_password" {
  description = "Root password: 8-30 characters, at least three of uppercase, lowercase, digits and ()`~!@#$%^&*_-+=|{}[]:;'<>,.?/"
  type        = string
  sensitive   = true

  validation {
    condition = can(regex("^[A-Za-z0-9()`~!@#$%^&*_+=|{}\\[\\]:;'<>,.?/-]{8,30}$", var.instance_password)) && length([
      for class in ["[a-z]", "[A-Z]", "[0-9]", "[()`~!@#$%^&*_+=|{}\\[\\]:;'<>,.?/-]"] : class
      if can(regex(class, var.instance_password))
    ]) >= 3
    error_message = "8-30 characters with at least three of uppercase letters, lowercase letters, digits and special characters."
  }
}

variable "checkpoint" {
  description = "Hugging Face MusicGen checkpoint exported at first boot (LM in fp16)."
  type        = string
  default     = "facebook/musicgen-small"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$", var.checkpoint))
    error_message = "checkpoint must be a hub id such as facebook/musicgen-small."
  }
}

variable "page_access_cidr" {
  description = "The only IPv4 CIDR that reaches HTTPS (443: page and API) and its redirect (80), e.g. 203.0.113.7/32."
  type        = string

  validation {
    condition     = can(cidrhost(var.page_access_cidr, 0)) && can(regex("^[0-9.]+/[0-9]+$", var.page_access_cidr))
    error_message = "page_access_cidr must be an IPv4 CIDR."
  }
}

variable "page_password" {
  description = "Password of the page user \"musicgen\" (HTTP basic auth): 10-64 printable characters, no spaces."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[!-~]{10,64}$", var.page_password))
    error_message = "page_password must be 10-64 printable ASCII characters without spaces."
  }
}

variable "api_token" {
  description = "Bearer token of the HTTP/gRPC API, separate from the page password: 32-128 of letters, digits, _ and - (e.g. openssl rand -hex 32). Stored on the host only as a SHA-256 hash."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{32,128}$", var.api_token))
    error_message = "api_token must be 32-128 letters, digits, '_' or '-'."
  }
}

variable "domain_name" {
  description = "Optional DNS name pointing at the instance's public IP: the proxy gets a public certificate for it (ACME). Empty: a certificate from the host's own CA for its public IP."
  type        = string
  default     = ""

  validation {
    condition     = var.domain_name == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain_name))
    error_message = "domain_name must be empty or a lowercase DNS name."
  }
}

variable "source_repository_url" {
  description = "https git URL of this project; the host builds its images from it."
  type        = string

  validation {
    condition     = can(regex("^https://[A-Za-z0-9._~:/@%+=-]+$", var.source_repository_url))
    error_message = "source_repository_url must be an https git URL."
  }
}

variable "source_ref" {
  description = "Branch or tag of the project to deploy."
  type        = string
  default     = "main"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/-]{1,128}$", var.source_ref))
    error_message = "source_ref must be a branch or tag name."
  }
}

variable "ready_timeout" {
  description = "Seconds Terraform waits for the host to report the page ready (driver, images, export)."
  type        = number
  default     = 5400

  validation {
    condition     = var.ready_timeout >= 600 && var.ready_timeout <= 5700
    error_message = "ready_timeout must be between 600 and 5700 seconds (the invocation's create timeout is 100 minutes)."
  }
}
