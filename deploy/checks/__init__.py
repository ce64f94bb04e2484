"""Offline checks of the deploy folder (`make deploy-check`; `python -m deploy.checks`).

Each checker takes a parsed document (so tests can mutate a copy) and returns a list of
findings (strings); an empty list means the document passed. Nothing here reaches a cloud,
a registry or a docker engine.
"""

from pathlib import Path

DEPLOY_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = DEPLOY_DIR.parent
ROS_TEMPLATE = DEPLOY_DIR / "computenest" / "ros_templates" / "template.yaml"
COMPUTENEST_CONFIG = DEPLOY_DIR / "computenest" / "config.yaml"
COMPOSE_FILE = DEPLOY_DIR / "compose.yaml"
TERRAFORM_DIR = DEPLOY_DIR / "terraform"
CLOUD_INIT_TEMPLATE = TERRAFORM_DIR / "cloud-init.yaml.tftpl"
BOOTSTRAP = DEPLOY_DIR / "host" / "bootstrap.sh"
BOOTSTRAP_UNIT = DEPLOY_DIR / "host" / "systemd" / "musicgen-bootstrap.service"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# What the host exposes to the network, everywhere: the proxy's HTTPS port (page and API) and its
# port 80 (redirects to HTTPS; ACME's HTTP challenge), nothing else.
HTTPS_PORT = 443
HTTP_PORT = 80
OPEN_PORTS = (HTTPS_PORT, HTTP_PORT)


def bootstrap_setting_keys(text: str | None = None) -> set[str]:
    """The MUSICGEN_* settings bootstrap.sh knows (its set_defaults), plus HF_ENDPOINT."""
    import re

    text = BOOTSTRAP.read_text() if text is None else text
    body = text.split("set_defaults() {", 1)[1].split("\n}", 1)[0]
    return set(re.findall(r'"\$\{(MUSICGEN_[A-Z0-9_]+|HF_ENDPOINT):=', body))
