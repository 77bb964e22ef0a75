#!/usr/bin/env python3
"""Renders and checks the monoskope-backup chart with Helm's own library (helm-python-sdk).

For several value sets: the values pass the chart's schema, the chart renders and lints, every
rendered manifest is valid against the Kubernetes schemas (kubernetes-validate), the rendered
configuration file is accepted by the real `backup-server check-config`, and every backupctl /
backup-server command line in the manifests is accepted by the real binaries (MBK_PARSE_ONLY).
The rendered PrometheusRule holds exactly the rules `promtool test rules` checks. Wrong values
fail with a message naming the value.

Usage: test_chart.py BACKUP_SERVER_BIN BACKUPCTL_BIN
"""

import copy
import os
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "..", "monoskope-backup")
KUBE_VERSION = "1.30"
SERVER_BIN, CTL_BIN = sys.argv[1], sys.argv[2]

S3 = {"destination": {"s3": {"endpoint": "s3.example.com", "bucket": "m8-backups",
                             "region": "eu-central-1", "disableSSL": False, "prefix": "eventstore"}}}
S3_LOCKED = {"destination": {"s3": {**S3["destination"]["s3"],
                                    "objectLock": {"mode": "COMPLIANCE", "days": 30}}}}

VALUE_SETS = {
    "defaults": {"backup": copy.deepcopy(S3)},
    "s3-alerting-restore": {
        "backup": {
            **copy.deepcopy(S3_LOCKED),
            "prometheusPushgatewayUrl": "http://pushgateway.monitoring:9091",
            "alerting": {"enabled": True, "secondsSinceLastSuccessfulBackup": 3600,
                         "alertAfter": "30m", "labels": {"release": "monitoring"}},
            "drill": {"schedule": "0 4 * * 0"},
            "incremental": {"enabled": True, "fullEvery": 11},
            "retention": {"keepDaily": 7, "keepWeekly": 5, "keepMonthly": 12, "keepYearly": 3},
            "copies": ["s3://m8-backups-copy/eventstore"],
            "restore": {"enabled": True, "backupIdentifier": "20261124T101500123Z-1a2b3c4d",
                        "dropExisting": True},
        },
        "eventStore": {"eventsDbSecretName": "m8-eventstore-db"},
        "catalog": {"existingSecretName": "m8-backup-catalog"},
        "serviceMonitor": {"enabled": True},
    },
    "tls-gateway": {
        "backup": {**copy.deepcopy(S3), "restore": {"enabled": True, "viaApi": True,
                                                   "rolloutRestart": {"enabled": False}}},
        "tls": {"enabled": True, "secretName": "m8-backup-tls"},
        "auth": {"mode": "gateway", "gateway": "m8-gateway:8080", "admins": ["admin@example.com"]},
    },
    "jwt-public-key": {
        "backup": copy.deepcopy(S3),
        "auth": {"mode": "jwt", "jwt": {"publicKeySecretName": "m8-authentication",
                                        "issuer": "https://m8.example.com"},
                 "admins": ["admin@example.com"], "machineIdentities": ["backup-cron"]},
    },
    "jwt-jwks": {
        "backup": {**copy.deepcopy(S3), "enabled": False},
        "auth": {"mode": "jwt", "jwt": {"jwksUrl": "https://m8.example.com/keys",
                                        "issuer": "https://m8.example.com"},
                 "admins": ["7d1b4c52-8d1e-4c5a-9b2f-0a1b2c3d4e5f"]},
    },
}

with open(os.path.join(CHART, "examples", "monoskope-m8.yaml")) as f:
    M8 = yaml.safe_load(f)
VALUE_SETS["examples/monoskope-m8.yaml"] = copy.deepcopy(M8)
M8_RESTORE = copy.deepcopy(M8)
M8_RESTORE["backup"]["restore"]["enabled"] = True
VALUE_SETS["examples/monoskope-m8.yaml, restore enabled"] = M8_RESTORE
VALUE_SETS["catalog-client-cert"] = {
    "backup": copy.deepcopy(S3),
    "catalog": {"postgres": {"host": "m8-cockroachdb-public", "clientCertSecretName": "m8-backup-catalog-cert"}},
}

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg)


def docs(rendered):
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                yield path, d


def pod_spec(obj):
    kind = obj["kind"]
    if kind == "Deployment" or kind == "Job":
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def run_parse_only(container, where):
    cmd = container.get("command", [])
    if not cmd or cmd[0] not in ("backupctl", "backup-server"):
        return
    binary = CTL_BIN if cmd[0] == "backupctl" else SERVER_BIN
    env = {"PATH": os.environ.get("PATH", ""), "MBK_PARSE_ONLY": "1"}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    p = subprocess.run([binary] + cmd[1:] + container.get("args", []), env=env,
                       capture_output=True, text=True)
    check(p.returncode == 0,
          f"{where}: {cmd + container.get('args', [])} rejected by {cmd[0]}: {p.stderr.strip()}")


chart = helm.Chart.load(CHART)
with open(os.path.join(CHART, "files", "alerts.yaml")) as f:
    alert_file = yaml.safe_load(f)

for name, values in VALUE_SETS.items():
    try:
        chart.validate_schema(values)
        rendered = chart.render(values, name="m8", namespace="monoskope", is_install=True)
    except Exception as e:  # noqa: BLE001 - report and go on
        check(False, f"{name}: {e}")
        continue
    report = helm.lint(CHART, values, strict=False, namespace="monoskope")
    errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 3]
    check(not errors and not report.get("errors"), f"{name}: lint: {errors or report.get('errors')}")
    kinds = []
    for path, obj in docs(rendered):
        kinds.append(obj["kind"])
        where = f"{name}: {path} ({obj['kind']})"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            check(obj["kind"] in ("PrometheusRule", "ServiceMonitor"), where)
        else:
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except Exception as e:  # noqa: BLE001
                check(False, f"{where}: {e}")
        spec = pod_spec(obj)
        if spec:
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                run_parse_only(c, where)
                sc = c.get("securityContext", {})
                check(sc.get("readOnlyRootFilesystem") is True, f"{where}: {c['name']} root filesystem is writable")
            check(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: may run as root")
        if obj["kind"] == "ConfigMap":
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                f.write(obj["data"]["config.yaml"])
            p = subprocess.run([SERVER_BIN, "check-config", "--config", f.name],
                               capture_output=True, text=True)
            os.unlink(f.name)
            check(p.returncode == 0, f"{where}: backup-server rejects the rendered config: {p.stderr.strip()}")
        if obj["kind"] == "CronJob":
            check(obj["spec"]["concurrencyPolicy"] == "Forbid", f"{where}: concurrencyPolicy")
            c = pod_spec(obj)["containers"][0]
            want = ["create", "--wait"] + (["--incremental"] if values["backup"].get("incremental", {}).get("enabled") else [])
            check(c["args"] == want, f"{where}: args {c['args']}")
        if obj["kind"] == "Job":
            spec = pod_spec(obj)
            restore = (spec.get("initContainers") or spec["containers"])[0]
            check(restore["args"][:4] == ["restore", values["backup"].get("restore", {}).get("backupIdentifier", "latest"), "--wait", "--yes"],
                  f"{where}: restore args {restore['args']}")
            want_drop = values["backup"]["restore"].get("dropExisting", False)
            check(("--drop-existing" in restore["args"]) == want_drop, f"{where}: --drop-existing")
            if spec.get("initContainers"):
                main = spec["containers"][0]
                check(main["args"][:3] == ["rollout", "restart", "deployment"], f"{where}: {main['args']}")
        if obj["kind"] == "Role":
            rules = obj["rules"]
            check(rules == [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "patch"]}],
                  f"{where}: the Role is not minimal: {rules}")
        if obj["kind"] == "PrometheusRule":
            a = values["backup"]["alerting"]
            want = yaml.safe_load(
                yaml.safe_dump(alert_file)
                .replace("> 86400", f"> {a.get('secondsSinceLastSuccessfulBackup', 86400)}")
                .replace("for: 1h", f"for: {a.get('alertAfter', '1h')}")
                .replace("(threshold 86400 s)", f"(threshold {a.get('secondsSinceLastSuccessfulBackup', 86400)} s)")
            )
            check(obj["spec"]["groups"] == want["groups"], f"{where}: rules differ from files/alerts.yaml")
        if obj["kind"] == "Deployment":
            c = pod_spec(obj)["containers"][0]
            check(any(p["name"] == "metrics" for p in c["ports"]), f"{where}: no metrics port")
            check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{where}: liveness probe")
    expect = {"Deployment", "Service", "ConfigMap"}
    if values["backup"].get("enabled", True):
        expect.add("CronJob")
    if values["backup"].get("restore", {}).get("enabled"):
        expect.add("Job")
    if values["backup"].get("alerting", {}).get("enabled"):
        expect.add("PrometheusRule")
    check(expect <= set(kinds), f"{name}: missing {expect - set(kinds)} in {kinds}")
    print(f"{name}: {len(kinds)} manifests checked")

# The Monoskope example: table mode through Monoskope's own database client certificate, gateway
# auth, the CronJob's token, and the restore Job that restarts Monoskope's deployments.
M8_DB_URL = ("postgres://eventstore@m8-cockroachdb-public:26257/eventstore?sslmode=verify-full"
             "&sslrootcert=/etc/monoskope-backup/events-db/ca.crt"
             "&sslcert=/etc/monoskope-backup/events-db/tls.crt"
             "&sslkey=/etc/monoskope-backup/events-db/tls.key")
m8 = {(d["kind"], d["metadata"]["name"]): d
      for _, d in docs(chart.render(copy.deepcopy(M8_RESTORE), name="m8-backup", namespace="monoskope"))}
config = yaml.safe_load(m8[("ConfigMap", "m8-backup-monoskope-backup")]["data"]["config.yaml"]) \
    if ("ConfigMap", "m8-backup-monoskope-backup") in m8 else None
if config is None:
    cms = [d for (k, _), d in m8.items() if k == "ConfigMap"]
    config = yaml.safe_load(cms[0]["data"]["config.yaml"])
check(config["eventStore"]["eventsDb"] == M8_DB_URL, f"m8: events database URL {config['eventStore'].get('eventsDb')}")
check(config["eventStore"]["address"] == "m8-eventstore:8080", "m8: EventStore address")
check(config["auth"] == {"mode": "gateway", "gateway": "m8-gateway:8080", "admins": [],
                         "machineIdentities": [], "readers": []}, f"m8: auth {config['auth']}")
check(config["catalog"]["url"].startswith("sqlite://"), "m8: embedded catalog")
check(config["backup"].get("continuous") == {
    "enabled": True, "interval": "5s", "reconcile": "60s", "compact": "1h",
    "bus": {"caFile": "/etc/monoskope-backup/bus/ca.crt", "certFile": "/etc/monoskope-backup/bus/tls.crt",
            "keyFile": "/etc/monoskope-backup/bus/tls.key"}}, f"m8: continuous {config['backup'].get('continuous')}")
dep = [d for (k, _), d in m8.items() if k == "Deployment"][0]
spec = pod_spec(dep)
vols = {v["name"]: v for v in spec["volumes"]}
check(vols.get("events-db", {}).get("secret") == {"secretName": "m8-db-client-auth-cert", "defaultMode": 0o440},
      f"m8: events-db volume {vols.get('events-db')}")
mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
check(mounts.get("events-db") == {"name": "events-db", "mountPath": "/etc/monoskope-backup/events-db", "readOnly": True},
      f"m8: events-db mount {mounts.get('events-db')}")
# Monoskope's bus secrets as they are: BUS_URL/ROUTING_KEY_PREFIX as environment, the client
# certificate mounted where the config points.
check(vols.get("bus", {}).get("secret") == {"secretName": "m8-messagebus-client-auth-cert", "defaultMode": 0o440},
      f"m8: bus volume {vols.get('bus')}")
check(mounts.get("bus") == {"name": "bus", "mountPath": "/etc/monoskope-backup/bus", "readOnly": True},
      f"m8: bus mount {mounts.get('bus')}")
env_from = [e["secretRef"]["name"] for e in spec["containers"][0]["envFrom"]]
check(env_from == ["m8-backup", "m8-messagebus-client-config"], f"m8: envFrom {env_from}")
cron = [d for (k, _), d in m8.items() if k == "CronJob"][0]
cspec = pod_spec(cron)
check({"name": "token", "secret": {"secretName": "m8-backup-cron-token"}} in cspec["volumes"]
      or any(v["name"] == "token" and v["secret"]["secretName"] == "m8-backup-cron-token" for v in cspec["volumes"]),
      f"m8: CronJob token volume {cspec['volumes']}")
cenv = {e["name"]: e.get("value") for e in cspec["containers"][0]["env"]}
check(cenv.get("BACKUP_TOKEN_FILE") == "/var/run/secrets/monoskope-backup/token", f"m8: CronJob env {cenv}")
check(cenv.get("BACKUP_SERVER") == "http://m8-backup-monoskope-backup.monoskope.svc:50051", f"m8: CronJob env {cenv}")
job = [d for (k, _), d in m8.items() if k == "Job"][0]
jspec = pod_spec(job)
restore = jspec["initContainers"][0]
check(restore["args"][:4] == ["restore", "latest", "--wait", "--yes"], f"m8: restore {restore['args']}")
check("--drop-existing" not in restore["args"] and "--via-api" not in restore["args"],
      f"m8: the restore goes into the events table, never through the bus: {restore['args']}")
main = jspec["containers"][0]
check(main["args"][:3] == ["rollout", "restart", "deployment"] and "app.kubernetes.io/part-of=monoskope" in " ".join(main["args"]),
      f"m8: rollout restart {main['args']}")
print("examples/monoskope-m8.yaml: mounts, environment, CronJob token and restore Job checked")

# With the default thresholds the PrometheusRule is the tested file, byte for byte in meaning.
rendered = chart.render({"backup": {**copy.deepcopy(S3), "alerting": {"enabled": True}}},
                        name="m8", namespace="monoskope")
rules = [d for _, d in docs(rendered) if d["kind"] == "PrometheusRule"]
check(len(rules) == 1 and rules[0]["spec"]["groups"] == alert_file["groups"],
      "default PrometheusRule differs from files/alerts.yaml")

# Wrong values fail rendering, naming the value.
BAD = [
    ({"schedule": "every night"}, "/backup/schedule"),
    ({"retentionCount": -1}, "/backup/retentionCount"),
    ({"retentionCont": 3}, "retentionCont"),
    ({"retention": {"keepDaly": 7}}, "keepDaly"),
    ({"destination": {"s3": {"bucket": "b", "objectLock": {"mode": "governance", "days": 1}}}}, "/backup/destination/s3/objectLock/mode"),
    ({"retention": {"keepWeekly": -1}}, "/backup/retention/keepWeekly"),
    ({"timeout": "soon"}, "/backup/timeout"),
    ({"alerting": {"alertAfter": 5}}, "/backup/alerting/alertAfter"),
    ({"destination": {"s3": {"bucket": "b", "disableSsl": True}}}, "disableSsl"),
]
for bad, named in BAD:
    values = {"backup": {**copy.deepcopy(S3), **bad}}
    try:
        chart.render(values, name="m8", namespace="monoskope")
        check(False, f"{bad} was accepted")
    except Exception as e:  # noqa: BLE001
        check(named in str(e), f"{bad}: the error does not name {named}: {e}")
for values, named in [
    ({"backup": copy.deepcopy(S3), "auth": {"mode": "jwt", "jwt": {"issuer": "x", "publicKeySecretName": "k"}}}, "auth.admins"),
    ({"backup": copy.deepcopy(S3), "auth": {"mode": "none"}}, "/auth/mode"),
    ({"backup": {"destination": {"s3": {"bucket": ""}}}}, "backup.destination.s3.bucket"),
    ({"backup": copy.deepcopy(S3), "eventStore": {"eventsDbSecretName": "x", "eventsDb": {"host": "db"}}}, "eventStore.eventsDb.host"),
    ({"backup": copy.deepcopy(S3), "catalog": {"existingSecretName": "x", "postgres": {"host": "db"}}}, "catalog.postgres.host"),
    ({"backup": {**copy.deepcopy(S3), "continuous": {"enabled": True}}}, "backup.continuous.enabled follows the events table"),
    ({"backup": copy.deepcopy(S3), "eventStore": {"eventsDb": {"host": "db", "sslmode": "prefer"}}}, "sslmode"),
]:
    try:
        chart.render(values, name="m8", namespace="monoskope")
        check(False, f"{values} was accepted")
    except Exception as e:  # noqa: BLE001
        check(named in str(e), f"{values}: the error does not name {named}: {e}")

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("chart ok")
