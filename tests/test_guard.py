"""The server's policy: a policy file and a desired-state file in, every violation at its FILE:LINE:COL out.

Pure (no Docker): the policy is a real file read by ``load_policy``, the desired state is text read by the
real reader (``parse_desired``), and ``check`` places each violation. Every YAML document is written
line by line so that the expected line and column can be counted by eye (columns are 1-based; a list item
``      - x`` starts at column 9).
"""

from __future__ import annotations

import posixpath
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.adapters.yamlfile import parse_yaml
from reconciler.converge.run import Trust, parse_desired, read_at
from reconciler.core import guard as core
from reconciler.core.guard import ContainerPolicy, ServerPolicy, image_allowed, path_under, security_opt_allowed
from reconciler.errors import InvalidDesiredState, UserError
from reconciler.trust.server_policy import InvalidPolicy, PolicyViolation, check, enforce, load_policy
from tests.support.state import cli, show

FILE = "desired-state.yaml"


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def lines_of(desired_text: str, policy: ServerPolicy | None) -> list[str]:
    text = desired_text.encode()
    return check(parse_yaml(text, filename=FILE)[1], FILE, parse_desired(text, FILE, ""), policy)


def checked(tmp_path: Path, policy_text: str, desired_text: str) -> list[str]:
    return lines_of(desired_text, load_policy(write_policy(tmp_path, policy_text)))


def policy_errors(tmp_path: Path, policy_text: str) -> list[str]:
    with pytest.raises(InvalidPolicy) as caught:
        load_policy(write_policy(tmp_path, policy_text))
    assert isinstance(caught.value, UserError)
    assert not isinstance(caught.value, InvalidDesiredState)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


# --- the policy file ------------------------------------------------------------------------------------

EXAMPLE = """\
images: ["registry.example.com/team/", "myrepo/", "haproxy"]
volumes: ["/srv/apps/", "/var/lib/myapp"]
env_files: ["/etc/myapp/"]
ports:
  interfaces: ["127.0.0.1", "0.0.0.0"]
  ranges: ["8000-8999", 443]
containers:
  host_network: true
  privileged: false
  devices: ["/dev/dri", "/dev/ttyUSB0"]
  security_opt: ["apparmor=", "seccomp=/etc/docker/seccomp/web.json"]
  cap_add: ["NET_BIND_SERVICE", "CAP_NET_RAW"]
"""


def test_the_documented_policy_loads(tmp_path: Path) -> None:
    assert EXAMPLE in (core.__doc__ or "").replace("\n    ", "\n")  # the docstring shows this very file
    policy = load_policy(write_policy(tmp_path, EXAMPLE))
    assert policy.images == ("registry.example.com/team/", "myrepo/", "haproxy")
    assert policy.volumes == ("/srv/apps/", "/var/lib/myapp")
    assert policy.env_files == ("/etc/myapp/",)
    assert policy.ports is not None
    assert policy.ports.interfaces == ("127.0.0.1", "0.0.0.0")
    assert policy.ports.ranges == ("8000-8999", "443")  # a bare number is a range of one
    assert policy.containers == ContainerPolicy(
        host_network=True,
        devices=("/dev/dri", "/dev/ttyUSB0"),
        security_opt=("apparmor=", "seccomp=/etc/docker/seccomp/web.json"),
        cap_add=("NET_BIND_SERVICE", "CAP_NET_RAW"),
    )


def test_every_error_of_a_policy_file_at_once_at_its_place(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        'imags: ["myrepo/"]\n'
        'volumes: ["/srv/apps", srv/data]\n'
        "ports:\n"
        '  ranges: ["9000-8000", 70000, 443, "80-x"]\n'
        '  interface: ["127.0.0.1"]\n'
        "env_files:\n",
    )
    with pytest.raises(InvalidPolicy) as caught:
        load_policy(policy)
    assert caught.value.errors == [
        f"{policy}:1:1: imags: unknown key 'imags'; did you mean 'images'?",
        f"{policy}:2:24: volumes[1]: 'srv/data' is not an absolute path: host paths start with /",
        f"{policy}:4:12: ports.ranges[0]: '9000-8000' runs backwards: write 8000-9000",
        f"{policy}:4:25: ports.ranges[1]: port 70000 is out of range 1-65535",
        f"{policy}:4:37: ports.ranges[3]: '80-x' is not a port or a range of ports (443, 8000-8999)",
        f"{policy}:5:3: ports.interface: unknown key 'interface'; did you mean 'interfaces'?",
        f"{policy}:6:1: env_files: no value: write [] to allow none, or leave the key out to allow any",
    ]


def test_bad_values_of_a_policy_file(tmp_path: Path) -> None:
    name = tmp_path / "policy.yaml"
    assert policy_errors(tmp_path, 'images: ["nginx:1.2", "localhost:5000/", "Team/"]\nports: {}\n') == [
        f"{name}:1:10: images[0]: 'nginx:1.2' is not a repository prefix"
        " (registry.example.com/team/, localhost:5000/, myrepo/, nginx)",
        f"{name}:1:42: images[2]: 'Team/' is not a repository prefix"
        " (registry.example.com/team/, localhost:5000/, myrepo/, nginx)",
        f"{name}:2:8: ports: name interfaces or ranges (or leave ports out to allow any)",
    ]
    assert policy_errors(tmp_path, "ports: {interfaces: [localhost, 0.0.0.0]}\n") == [
        f"{name}:1:22: ports.interfaces[0]: 'localhost' is not an IP address (127.0.0.1, 0.0.0.0, ::1)"
    ]
    assert policy_errors(tmp_path, "images: myrepo/\nports: [443]\nfrobnicate: 1\n") == [
        f"{name}:1:9: images: write a list ([...])",
        f"{name}:2:8: ports: write a mapping (interfaces: [...], ranges: [...])",
        f"{name}:3:1: frobnicate: unknown key 'frobnicate'; valid keys: containers, env_files, images, ports, volumes",
    ]


def test_an_empty_or_broken_policy_file_is_refused_at_its_place(tmp_path: Path) -> None:
    name = tmp_path / "policy.yaml"
    assert policy_errors(tmp_path, "") == [
        f"{name}:1:1: the policy file is empty; write {{}} to allow any image, host path and port"
        " (containers: keeps its defaults)"
    ]
    assert policy_errors(tmp_path, "- images\n") == [
        f"{name}:1:1: the top level must be a mapping (images, volumes, env_files, ports, containers)"
    ]
    (broken,) = policy_errors(tmp_path, 'images: ["myrepo/"\nvolumes: []\n')
    assert broken.startswith(f"{name}:")
    assert policy_errors(tmp_path, "images: []\nimages: []\n")[0].startswith(f"{name}:2:1: ")  # a duplicate key


def test_a_policy_that_allows_anything_is_written_on_purpose(tmp_path: Path) -> None:
    assert load_policy(write_policy(tmp_path, "{}\n")) == ServerPolicy()
    assert load_policy(write_policy(tmp_path, "images: []\n")).images == ()  # nothing, not anything


def test_a_policy_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError) as caught:
        load_policy(missing)
    assert str(caught.value) == f"policy file {missing}: no such file or directory"
    with pytest.raises(UserError) as caught:
        load_policy(tmp_path)
    assert str(caught.value) == f"policy file {tmp_path}: is a directory"


# --- what a commit may ask for --------------------------------------------------------------------------

VOLUMES = """\
apps:
  web:
    image: myrepo/web
    version: v1
    volumes:
      - /srv/apps:/a
      - /srv/apps/web/data:/b
      - /srv/appsevil:/c
      - /srv/apps/../../etc:/d
      - /srv/apps/web/../x:/e
      - data:/f
      - /var/run/docker.sock:/var/run/docker.sock:ro
      - /var/lib/myapp:/g:ro
      - //srv/apps/x:/h
      - /var/lib/myappx:/i
"""


def test_bind_mounts_only_from_allowed_host_paths(tmp_path: Path) -> None:
    allowed = "(policy volumes: /srv/apps, /var/lib/myapp/)"
    assert checked(tmp_path, 'volumes: ["/srv/apps", "/var/lib/myapp/"]\n', VOLUMES) == [
        f"{FILE}:8:9: apps.web.volumes[2]: /srv/appsevil is not under an allowed host path {allowed}",
        f"{FILE}:9:9: apps.web.volumes[3]: /srv/apps/../../etc (that is /etc) is not under an allowed host path"
        f" {allowed}",
        f"{FILE}:12:9: apps.web.volumes[6]: /var/run/docker.sock is not under an allowed host path {allowed}",
        f"{FILE}:15:9: apps.web.volumes[9]: /var/lib/myappx is not under an allowed host path {allowed}",
    ]


def test_no_host_path_at_all_still_allows_named_volumes(tmp_path: Path) -> None:
    lines = checked(tmp_path, "volumes: []\n", VOLUMES)
    assert len(lines) == 9  # every bind mount, not data:/f
    assert (
        lines[0]
        == f"{FILE}:6:9: apps.web.volumes[0]: /srv/apps is not under an allowed host path (policy volumes: none)"
    )
    assert not any("volumes[5]" in line for line in lines)


def test_env_files_only_from_allowed_host_paths(tmp_path: Path) -> None:
    desired = """\
apps:
  web:
    image: myrepo/web
    version: v1
    env_file: /etc/myapp/web.env
  other:
    image: myrepo/other
    version: v1
    env_file: /etc/myapp/../shadow
  third:
    image: myrepo/third
    version: v1
    env_file: /etc/myappx.env
"""
    allowed = "(policy env_files: /etc/myapp/)"
    assert checked(tmp_path, 'env_files: ["/etc/myapp/"]\n', desired) == [
        f"{FILE}:9:15: apps.other.env_file: /etc/myapp/../shadow (that is /etc/shadow) is not under an allowed"
        f" host path {allowed}",
        f"{FILE}:13:15: apps.third.env_file: /etc/myappx.env is not under an allowed host path {allowed}",
    ]


def test_a_secrets_source_is_held_to_the_env_files_folders(tmp_path: Path) -> None:
    desired = """\
apps:
  web:
    image: myrepo/web
    version: v1
    secrets:
      - {source: /etc/myapp/db_password, target: db_password}
      - {source: /etc/shadow, target: shadow}
"""
    assert checked(tmp_path, 'env_files: ["/etc/myapp/"]\n', desired) == [
        f"{FILE}:7:18: apps.web.secrets[1].source: /etc/shadow is not under an allowed host path"
        " (policy env_files: /etc/myapp/)",
    ]


PORTS = """\
apps:
  web:
    image: myrepo/web
    version: v1
    ports:
      - 127.0.0.1:8080:80
      - 8080:80
      - 127.0.0.1:9000:80
      - 127.0.0.1:443:443
      - "[::1]:8999:80"
      - 127.0.0.1:7000
      - "9000"
      - 10.0.0.5:8001:80/udp
      - 0.0.0.0:22:22
"""


def test_ports_only_on_allowed_interfaces_and_host_ports(tmp_path: Path) -> None:
    policy = 'ports:\n  interfaces: ["127.0.0.1", "0:0::1"]\n  ranges: ["8000-8999", 443]\n'
    interfaces = "(policy ports.interfaces: 127.0.0.1, 0:0::1)"
    ranges = "(policy ports.ranges: 8000-8999, 443)"
    assert checked(tmp_path, policy, PORTS) == [
        # no IP is 0.0.0.0; [::1] is the policy's 0:0::1; 127.0.0.1:7000 takes a random host port: allowed
        f"{FILE}:7:9: apps.web.ports[1]: 8080:80 binds 0.0.0.0 (no IP given), which is not an allowed interface"
        f" {interfaces}",
        f"{FILE}:8:9: apps.web.ports[2]: 127.0.0.1:9000:80: host port 9000 is not in an allowed range {ranges}",
        f"{FILE}:12:9: apps.web.ports[6]: 9000 binds 0.0.0.0 (no IP given), which is not an allowed interface"
        f" {interfaces}",
        f"{FILE}:13:9: apps.web.ports[7]: 10.0.0.5:8001:80/udp binds 10.0.0.5, which is not an allowed interface"
        f" {interfaces}",
        f"{FILE}:14:9: apps.web.ports[8]: 0.0.0.0:22:22 binds 0.0.0.0, which is not an allowed interface {interfaces}",
        f"{FILE}:14:9: apps.web.ports[8]: 0.0.0.0:22:22: host port 22 is not in an allowed range {ranges}",
    ]


def test_ranges_alone_and_interfaces_alone(tmp_path: Path) -> None:
    ranges = "(policy ports.ranges: 8000-8999)"
    assert checked(tmp_path, 'ports: {ranges: ["8000-8999"]}\n', PORTS) == [
        f"{FILE}:8:9: apps.web.ports[2]: 127.0.0.1:9000:80: host port 9000 is not in an allowed range {ranges}",
        f"{FILE}:9:9: apps.web.ports[3]: 127.0.0.1:443:443: host port 443 is not in an allowed range {ranges}",
        f"{FILE}:14:9: apps.web.ports[8]: 0.0.0.0:22:22: host port 22 is not in an allowed range {ranges}",
    ]  # "9000" and 127.0.0.1:7000 take a random host port: the interface decides, and any is allowed
    # Interfaces are compared exactly: 0.0.0.0 allows a port written without an IP, not 127.0.0.1 by name.
    interfaces = "(policy ports.interfaces: 0.0.0.0)"
    lines = checked(tmp_path, 'ports: {interfaces: ["0.0.0.0"]}\n', PORTS)
    assert [line.split(": ")[1] for line in lines] == [
        "apps.web.ports[0]",
        "apps.web.ports[2]",
        "apps.web.ports[3]",
        "apps.web.ports[4]",
        "apps.web.ports[5]",
        "apps.web.ports[7]",
    ]
    assert lines[0] == (
        f"{FILE}:6:9: apps.web.ports[0]: 127.0.0.1:8080:80 binds 127.0.0.1, which is not an allowed interface"
        f" {interfaces}"
    )


IMAGES = """\
apps:
  a: {image: registry.example.com:5000/team/web, version: v1}
  b: {image: registry.example.com:5000/team/sub/web, version: v1}
  c: {image: registry.example.com:5000/teamevil/web, version: v1}
  d: {image: registry.example.com/team/web, version: v1}
  e: {image: registry.example.com:50001/team/web, version: v1}
  f: {image: myrepo/web, version: v1}
  g: {image: docker.io/myrepo/web, version: v1}
  h: {image: nginx, version: v1}
  i: {image: docker.io/library/nginx, version: v1}
  j: {image: nginxevil, version: v1}
  k: {image: nginx/extra, version: v1}
  l: {image: myrepoevil/web, version: v1}
"""


def test_images_only_under_allowed_repository_prefixes(tmp_path: Path) -> None:
    allowed = "(policy images: registry.example.com:5000/team/, myrepo/, nginx)"
    refused = {
        4: ("c", "registry.example.com:5000/teamevil/web"),
        5: ("d", "registry.example.com/team/web"),  # another registry: no port
        6: ("e", "registry.example.com:50001/team/web"),
        11: ("j", "nginxevil"),
        12: ("k", "nginx/extra"),  # docker.io/nginx/extra, not under docker.io/library/nginx
        13: ("l", "myrepoevil/web"),
    }
    assert checked(tmp_path, 'images: ["registry.example.com:5000/team/", "myrepo/", "nginx"]\n', IMAGES) == [
        f"{FILE}:{line}:14: apps.{app}.image: {image} is not under an allowed repository prefix {allowed}"
        for line, (app, image) in refused.items()
    ]


@pytest.mark.parametrize(
    ("image", "prefix", "allowed"),
    [
        ("nginx", "docker.io/library/", True),
        ("nginx", "library/", True),
        ("haproxy", "docker.io/", True),
        ("myrepo/web", "docker.io/", True),
        ("registry.example.com/web", "docker.io/", False),
        ("index.docker.io/library/nginx", "nginx", True),
        ("localhost:5000/web", "localhost:5000/", True),
        ("localhost:5000/web", "localhost/", False),
        ("myrepo/web", "myrepo/web", True),
        ("myrepo/web/api", "myrepo/web", True),
        ("myrepo/webevil", "myrepo/web", False),
        ("Registry.Example.com/team/web", "registry.example.com/team/", True),  # host names ignore case
    ],
)
def test_image_prefixes_by_whole_components(image: str, prefix: str, allowed: bool) -> None:
    assert image_allowed(image, prefix) is allowed


def test_the_proxy_is_checked_too(tmp_path: Path) -> None:
    policy = (
        'images: ["myrepo/"]\n'
        'volumes: ["/etc/reconciler/"]\n'
        'ports: {interfaces: ["127.0.0.1"], ranges: ["8000-8999"]}\n'
    )
    desired = """\
proxy:
  listen: ["127.0.0.1:8080", "0.0.0.0:80"]
  tls: {certs: /etc/ssl/private}
apps:
  web: {image: myrepo/web, version: v1}
"""
    assert checked(tmp_path, policy, desired) == [
        f"{FILE}:1:1: proxy.image: haproxy (the default proxy image) is not under an allowed repository prefix"
        " (policy images: myrepo/)",
        f"{FILE}:2:30: proxy.listen[1]: 0.0.0.0:80 binds 0.0.0.0, which is not an allowed interface"
        " (policy ports.interfaces: 127.0.0.1)",
        f"{FILE}:2:30: proxy.listen[1]: 0.0.0.0:80: host port 80 is not in an allowed range"
        " (policy ports.ranges: 8000-8999)",
        f"{FILE}:3:16: proxy.tls.certs: /etc/ssl/private is not under an allowed host path"
        " (policy volumes: /etc/reconciler/)",
    ]
    # What the file leaves to a default is placed at the proxy's key.
    assert checked(tmp_path, policy, "proxy:\n  image: myrepo/haproxy\napps: {}\n") == [
        f"{FILE}:1:1: proxy.listen: 0.0.0.0:80 (the default listen address) binds 0.0.0.0, which is not an"
        " allowed interface (policy ports.interfaces: 127.0.0.1)",
        f"{FILE}:1:1: proxy.listen: 0.0.0.0:80 (the default listen address): host port 80 is not in an allowed"
        " range (policy ports.ranges: 8000-8999)",
    ]


def test_what_the_policy_leaves_out_is_allowed(tmp_path: Path) -> None:
    assert checked(tmp_path, "{}\n", VOLUMES + "    ports: ['0.0.0.0:22:22']\n    env_file: /etc/shadow\n") == []
    assert checked(tmp_path, 'images: ["myrepo/"]\n', VOLUMES) == []  # volumes are not limited


def test_an_env_value_that_reached_a_checked_field_is_never_shown(tmp_path: Path) -> None:
    desired = """\
apps:
  web:
    image: myrepo/web
    version: v1
    env: {SECRET_PATH: &p "/opt/hunter2-secret:/data"}
    volumes: [*p]
"""
    lines = checked(tmp_path, 'volumes: ["/srv/apps/"]\n', desired)
    assert lines == [
        f"{FILE}:6:15: apps.web.volumes[0]: <an env value> is not under an allowed host path"
        " (policy volumes: /srv/apps/)"
    ]


def test_enforce_refuses_the_whole_commit_with_every_line(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, 'volumes: ["/srv/apps/"]\nimages: ["myrepo/"]\n'))
    text = VOLUMES.replace("myrepo/web", "evil/miner").encode()
    desired = parse_desired(text, FILE, "")
    with pytest.raises(PolicyViolation) as caught:
        enforce(parse_yaml(text, filename=FILE)[1], FILE, desired, policy)
    assert isinstance(caught.value, UserError)
    assert caught.value.lines == check(parse_yaml(text, filename=FILE)[1], FILE, desired, policy)
    assert caught.value.lines[0] == (
        f"{FILE}:3:12: apps.web.image: evil/miner is not under an allowed repository prefix (policy images: myrepo/)"
    )
    assert len(caught.value.lines) == 6
    assert str(caught.value) == "\n".join(caught.value.lines)
    allowed = b"apps:\n  web: {image: myrepo/web, version: v1, volumes: ['/srv/apps/web:/data']}\n"
    positions = parse_yaml(allowed, filename=FILE)[1]
    enforce(positions, FILE, parse_desired(allowed, FILE, ""), policy)  # nothing to refuse: returns


# --- the container options that hand a container the host ----------------------------------------------

CONTAINERS = """\
apps:
  web:
    image: myrepo/web
    version: v1
    network_mode: host
    privileged: true
    devices:
      - /dev/dri/renderD128
      - /dev/sda:/dev/xvda:r
      - /dev/dri/../mem
      - /dev/drix
    security_opt:
      - no-new-privileges
      - no-new-privileges:true
      - seccomp=unconfined
      - apparmor:myprofile
      - label:disable
      - seccomp=/etc/docker/seccomp/web.json
    cap_add: [NET_BIND_SERVICE, CAP_SYS_ADMIN, ALL, CAP_NET_RAW]
  quiet:
    image: myrepo/quiet
    version: v1
    network_mode: none
    cap_drop: [ALL]
    read_only: true
"""


def test_a_policy_that_says_nothing_of_containers_refuses_what_hands_over_the_host(tmp_path: Path) -> None:
    # The policy limits only images; the four options of issue 20 are refused all the same, cap_add is not.
    lines = checked(tmp_path, 'images: ["myrepo/"]\n', CONTAINERS)
    default = "(policy containers.security_opt: no-new-privileges by default)"
    assert lines == [
        f"{FILE}:5:19: apps.web.network_mode: host (the host's own network stack) is not allowed"
        " (policy containers.host_network: false by default)",
        f"{FILE}:6:17: apps.web.privileged: true (every capability and device of the host) is not allowed"
        " (policy containers.privileged: false by default)",
        f"{FILE}:8:9: apps.web.devices[0]: /dev/dri/renderD128 is not under an allowed device path"
        " (policy containers.devices: none by default)",
        f"{FILE}:9:9: apps.web.devices[1]: /dev/sda:/dev/xvda:r (host device /dev/sda) is not under an allowed"
        " device path (policy containers.devices: none by default)",
        f"{FILE}:10:9: apps.web.devices[2]: /dev/dri/../mem (host device /dev/mem) is not under an allowed"
        " device path (policy containers.devices: none by default)",
        f"{FILE}:11:9: apps.web.devices[3]: /dev/drix is not under an allowed device path"
        " (policy containers.devices: none by default)",
        # no-new-privileges, in either form, only takes power away: never refused
        f"{FILE}:15:9: apps.web.security_opt[2]: seccomp=unconfined is not an allowed security option {default}",
        f"{FILE}:16:9: apps.web.security_opt[3]: apparmor:myprofile is not an allowed security option {default}",
        f"{FILE}:17:9: apps.web.security_opt[4]: label:disable is not an allowed security option {default}",
        f"{FILE}:18:9: apps.web.security_opt[5]: seccomp=/etc/docker/seccomp/web.json is not an allowed security"
        f" option {default}",
    ]
    assert checked(tmp_path, "{}\n", CONTAINERS) == lines  # {} too: the defaults are the same


def test_what_the_containers_key_allows(tmp_path: Path) -> None:
    policy = """\
containers:
  host_network: true
  privileged: true
  devices: ["/dev/dri", "/dev/sda"]
  security_opt: ["apparmor=", "label:disable", "seccomp=/etc/docker/seccomp/web.json"]
  cap_add: [CAP_NET_BIND_SERVICE, NET_RAW]
"""
    devices = "(policy containers.devices: /dev/dri, /dev/sda)"
    options = (
        "(policy containers.security_opt: no-new-privileges, apparmor=, label:disable,"
        " seccomp=/etc/docker/seccomp/web.json)"
    )
    capabilities = "(policy containers.cap_add: CAP_NET_BIND_SERVICE, NET_RAW)"
    assert checked(tmp_path, policy, CONTAINERS) == [
        # /dev/dri allows what lies under it, by whole components; .. is folded before
        f"{FILE}:10:9: apps.web.devices[2]: /dev/dri/../mem (host device /dev/mem) is not under an allowed device"
        f" path {devices}",
        f"{FILE}:11:9: apps.web.devices[3]: /dev/drix is not under an allowed device path {devices}",
        # a prefix ending in = or : allows what follows it; ':' and '=' are one separator
        f"{FILE}:15:9: apps.web.security_opt[2]: seccomp=unconfined is not an allowed security option {options}",
        # CAP_ is folded on both sides
        f"{FILE}:19:33: apps.web.cap_add[1]: CAP_SYS_ADMIN is not an allowed capability {capabilities}",
        f"{FILE}:19:48: apps.web.cap_add[2]: ALL is not an allowed capability {capabilities}",
    ]
    everything = 'containers: {host_network: true, privileged: true, devices: ["/dev"],'
    everything += ' security_opt: ["seccomp=", "apparmor=", "label="], cap_add: [ALL]}\n'
    assert checked(tmp_path, everything, CONTAINERS) == []


def test_validate_with_a_policy_refuses_privileged_at_its_place_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text("apps:\n  web:\n    image: myrepo/web\n    version: v1\n    privileged: true\n")
    (tmp_path / "policy.yaml").write_text('images: ["myrepo/"]\n')

    refused = cli("validate", FILE, "--policy", "policy.yaml", cwd=tmp_path)
    (tmp_path / "allows.yaml").write_text('images: ["myrepo/"]\ncontainers: {privileged: true}\n')
    allowed = cli("validate", FILE, "--policy", "allows.yaml", cwd=tmp_path)

    assert refused.returncode == 1, show(refused)
    assert refused.stderr.splitlines() == [
        f"error: {FILE}:5:17: apps.web.privileged: true (every capability and device of the host) is not allowed"
        " (policy containers.privileged: false by default)"
    ], show(refused)
    assert allowed.returncode == 0 and allowed.stdout.strip() == f"{FILE}: valid, 1 app", show(allowed)


@pytest.mark.parametrize(
    ("option", "entry", "allowed"),
    [
        ("seccomp=unconfined", "seccomp=unconfined", True),
        ("seccomp:unconfined", "seccomp=unconfined", True),  # Docker reads ':' as '=' when there is no '='
        ("seccomp=unconfined", "seccomp=", True),
        ("seccomp=unconfined", "seccomp:", True),
        ("seccomp=unconfined", "seccomp", False),  # no separator: exactly
        ("seccompx=1", "seccomp=", False),
        ("seccomp=/etc/p/x.json", "seccomp=/etc/p/x.json", True),
        ("seccomp=/etc/p/x.json", "seccomp=/etc/p/", False),  # a path is not a prefix: it could hold ..
        ("label=user:u", "label:user:", True),  # label:user:u is label=user:u
        ("label=disable", "label=user:", False),
        ("apparmor=unconfined", "apparmor=docker-default", False),
    ],
)
def test_security_options_exactly_or_by_a_prefix_ending_in_a_separator(option: str, entry: str, allowed: bool) -> None:
    assert security_opt_allowed(option, entry) is allowed


def test_cap_add_left_out_allows_any_and_an_empty_list_none(tmp_path: Path) -> None:
    app = "apps:\n  web:\n    image: myrepo/web\n    version: v1\n    cap_add: [CAP_SYS_ADMIN, NET_BIND_SERVICE]\n"
    assert checked(tmp_path, "containers: {}\n", app) == []
    assert checked(tmp_path, "containers: {cap_add: []}\n", app) == [
        f"{FILE}:5:15: apps.web.cap_add[0]: CAP_SYS_ADMIN is not an allowed capability"
        " (policy containers.cap_add: none)",
        f"{FILE}:5:30: apps.web.cap_add[1]: NET_BIND_SERVICE is not an allowed capability"
        " (policy containers.cap_add: none)",
    ]
    # A flag written false says so without "by default".
    assert checked(
        tmp_path,
        "containers: {privileged: false}\n",
        app.replace("cap_add: [CAP_SYS_ADMIN, NET_BIND_SERVICE]", "privileged: true"),
    ) == [
        f"{FILE}:5:17: apps.web.privileged: true (every capability and device of the host) is not allowed"
        " (policy containers.privileged: false)"
    ]


def test_an_env_value_aliased_into_a_device_is_never_shown(tmp_path: Path) -> None:
    desired = """\
apps:
  web:
    image: myrepo/web
    version: v1
    env: {DEV: &d "/dev/hunter2"}
    devices: [*d]
"""
    assert checked(tmp_path, 'containers: {devices: ["/dev/dri"]}\n', desired) == [
        f"{FILE}:6:15: apps.web.devices[0]: <an env value> is not under an allowed device path"
        " (policy containers.devices: /dev/dri)"
    ]


def test_bad_values_of_the_containers_key_at_their_place(tmp_path: Path) -> None:
    name = tmp_path / "policy.yaml"
    policy = """\
containers:
  host_network: yes
  privileged:
  devices: [dev/dri, "/dev/ok"]
  security_opt: ["Seccomp=x", "apparmor="]
  cap_add: [net_raw, "CAP_NET_RAW"]
  priviledged: true
"""
    assert policy_errors(tmp_path, policy) == [
        f"{name}:2:17: containers.host_network: write true or false",
        f"{name}:3:3: containers.privileged: no value: write true or false (left out: false)",
        f"{name}:4:13: containers.devices[0]: 'dev/dri' is not an absolute path: host paths start with /",
        f"{name}:5:18: containers.security_opt[0]: 'Seccomp=x' is not a security option"
        " (no-new-privileges, seccomp=, apparmor=PROFILE)",
        f"{name}:6:13: containers.cap_add[0]: 'net_raw' is not a capability in capitals"
        " (NET_BIND_SERVICE, CAP_NET_RAW, ALL)",
        f"{name}:7:3: containers.priviledged: unknown key 'priviledged'; did you mean 'privileged'?",
    ]
    assert policy_errors(tmp_path, "containers: [privileged]\nprivileged: true\n") == [
        f"{name}:1:13: containers: write a mapping (host_network: true, privileged: true, devices: [...],"
        " security_opt: [...], cap_add: [...])",
        f"{name}:2:1: privileged: unknown key 'privileged'; valid keys: containers, env_files, images, ports, volumes",
    ]
    assert policy_errors(tmp_path, "containers:\n") == [
        f"{name}:1:1: containers: no value: write what to allow (host_network: true, ...), or leave the key out"
    ]
    assert policy_errors(tmp_path, "containers: {devices: , security_opt: }\n") == [
        f"{name}:1:14: containers.devices: no value: write the list of what to allow (left out or []: none)",
        f"{name}:1:25: containers.security_opt: no value: write the list of what to allow (left out or []: none)",
    ]


# --- no policy: what the agent warns about --------------------------------------------------------------


def test_dangerous_mounts_without_a_policy() -> None:
    desired = """\
apps:
  web:
    image: myrepo/web
    version: v1
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
      - /:/host:ro
      - /proc/1:/p
      - /srv/apps/web:/data
      - data:/data2
      - /run/../run/docker.sock:/s
      - /sys:/sys
      - /run:/r
      - /procfs:/x
"""
    socket = "mounts the Docker socket: the container can run anything on the host"
    kernel = "mounts the host kernel's own files (/proc, /sys)"
    assert lines_of(desired, None) == [
        f"{FILE}:6:9: apps.web.volumes[0]: /var/run/docker.sock {socket}",
        f"{FILE}:7:9: apps.web.volumes[1]: / mounts the host's whole file system",
        f"{FILE}:8:9: apps.web.volumes[2]: /proc/1 {kernel}",
        f"{FILE}:11:9: apps.web.volumes[5]: /run/../run/docker.sock (that is /run/docker.sock) {socket}",
        f"{FILE}:12:9: apps.web.volumes[6]: /sys {kernel}",
        f"{FILE}:13:9: apps.web.volumes[7]: /run mounts the folder of the Docker socket: the container can run"
        " anything on the host",
    ]


def test_container_options_that_hand_over_the_host_are_warned_about_without_a_policy() -> None:
    assert lines_of(CONTAINERS, None) == [
        f"{FILE}:5:19: apps.web.network_mode: host shares the host's own network stack: every service on its"
        " loopback, every port of the host",
        f"{FILE}:6:17: apps.web.privileged: true gives the container every capability and device of the host:"
        " root on the host",
        f"{FILE}:8:9: apps.web.devices[0]: /dev/dri/renderD128 passes a device of the host into the container",
        f"{FILE}:9:9: apps.web.devices[1]: /dev/sda:/dev/xvda:r (host device /dev/sda) passes a device of the host"
        " into the container",
        f"{FILE}:10:9: apps.web.devices[2]: /dev/dri/../mem (host device /dev/mem) passes a device of the host"
        " into the container",
        f"{FILE}:11:9: apps.web.devices[3]: /dev/drix passes a device of the host into the container",
        # no-new-privileges, an AppArmor profile, a seccomp profile: confined still, nothing to say
        f"{FILE}:15:9: apps.web.security_opt[2]: seccomp=unconfined turns off the container's system-call filter"
        " (seccomp)",
        f"{FILE}:17:9: apps.web.security_opt[4]: label:disable turns off the container's SELinux labels",
        f"{FILE}:19:33: apps.web.cap_add[1]: CAP_SYS_ADMIN gives the container mounts, namespaces and most of"
        " root's power over the host kernel",
        f"{FILE}:19:48: apps.web.cap_add[2]: ALL gives the container every capability, SYS_ADMIN and SYS_MODULE"
        " among them",
    ]


class OneFile:
    """A source that holds one commit's file: what ``read_at`` reads, as the agent's pass does."""

    def __init__(self, text: str) -> None:
        self.text = text.encode()

    def read(self, revision: str, file: str) -> bytes:
        return self.text

    def author(self, revision: str) -> str:
        return "someone"

    def identity(self, ref: str, revision: str, file: str) -> None:
        return None


def test_the_agent_is_handed_the_container_warnings_with_the_mounts() -> None:
    # read_at is what the agent reads a commit with; it prints each of Read.dangers once as a policy.warning.
    text = CONTAINERS.replace("    network_mode: host\n", "    volumes: [/:/host]\n", 1)
    read = read_at(OneFile(text), "main", "abc123", FILE, Trust())  # type: ignore[arg-type]
    assert read.dangers[:2] == (
        f"{FILE}:5:15: apps.web.volumes[0]: / mounts the host's whole file system",
        f"{FILE}:6:17: apps.web.privileged: true gives the container every capability and device of the host:"
        " root on the host",
    )
    assert read.dangers == tuple(lines_of(text, None))


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("security_opt", "apparmor=unconfined", "turns off the container's AppArmor profile"),
        ("security_opt", "systempaths=unconfined", "unmasks the host kernel's /proc and /sys paths"),
        ("security_opt", "label:type:spc_t", "runs the container as an unconfined SELinux process (spc_t)"),
        ("cap_add", "SYS_MODULE", "lets the container load modules into the host's kernel"),
        ("cap_add", "CAP_SYS_PTRACE", "lets the container trace and read the memory"),
        ("cap_add", "NET_ADMIN", "lets the container rewrite its network"),
        ("cap_add", "DAC_READ_SEARCH", "lets the container open any file of the host by its handle"),
        ("cap_add", "SYS_RAWIO", "gives the container raw access to the host's memory"),
    ],
)
def test_each_unconfining_option_is_named_with_what_it_turns_off(key: str, value: str, said: str) -> None:
    (line,) = lines_of(f"apps:\n  web:\n    image: a/b\n    version: v1\n    {key}: [{value}]\n", None)
    assert line.startswith(f"{FILE}:5:") and f"apps.web.{key}[0]: {value} {said}" in line


def test_a_file_with_no_dangerous_mount_has_nothing_to_warn_about() -> None:
    assert lines_of(VOLUMES.replace("/var/run/docker.sock:", "/srv/sock:"), None) == []
    proxy = "proxy:\n  tls: {certs: /}\napps: {}\n"
    assert lines_of(proxy, None) == [f"{FILE}:2:16: proxy.tls.certs: / mounts the host's whole file system"]


# --- a property: after normalising, under the allowed folder or refused ---------------------------------

SEGMENTS = st.lists(st.sampled_from(["apps", "appsx", "x", "..", ".", ""]), min_size=1, max_size=8)


@given(segments=SEGMENTS)
def test_a_bind_source_is_allowed_exactly_when_it_stays_under_the_folder(segments: list[str]) -> None:
    source = "/srv/" + "/".join(segments)
    folded: list[str] = ["srv"]  # an oracle that folds the path one component at a time
    for segment in segments:
        if segment == "..":
            folded = folded[:-1]
        elif segment not in (".", ""):
            folded.append(segment)
    inside = folded[:2] == ["srv", "apps"]
    desired = f'apps:\n  web:\n    image: myrepo/web\n    version: v1\n    volumes: ["{source}:/data"]\n'
    lines = lines_of(desired, ServerPolicy(volumes=("/srv/apps",)))
    if inside:
        assert lines == []
    else:
        shown = source if posixpath.normpath(source) == source else f"{source} (that is /{'/'.join(folded)})"
        assert lines == [
            f"{FILE}:5:15: apps.web.volumes[0]: {shown} is not under an allowed host path (policy volumes: /srv/apps)"
        ]
    assert path_under(source, "/srv/apps/") is inside
