//! The Kubernetes manifests in `istio/` (kustomize base and overlays): rendered with
//! `kubectl kustomize`, every object validated offline against the Kubernetes, Istio and
//! Prometheus Operator schemas (`harness/k8s-validate`), every `pluginConfig` compiled by the
//! filter's own configuration code, and what an operator relies on checked.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_core::{FilterConfig, Start};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn Error>>;

fn istio() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../istio")
}

/// `kubectl kustomize dir`, as JSON objects.
fn render(dir: &Path) -> Result<Vec<Value>, Box<dyn Error>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("kubectl (Debian package kubectl) did not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The validator's verdict: `Ok` when every object is valid, else its problems.
fn validate(docs: &[Value]) -> Result<Result<(), String>, Box<dyn Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s-validate");
    if !dir.join("node_modules").is_dir() {
        return Err(format!(
            "{}/node_modules is missing: `cargo xtask test` installs it (npm ci)",
            dir.display()
        )
        .into());
    }
    let out = harness::process::run_with_input(
        Command::new("node").arg(dir.join("validate.mjs")),
        &serde_json::to_vec(docs)?,
        "node",
    )?;
    let problems = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => Ok(Ok(())),
        Some(1) if !problems.is_empty() => Ok(Err(problems)),
        _ => Err(format!(
            "the validator failed: {problems}{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into()),
    }
}

fn overlays() -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(istio().join("overlays"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    dirs.sort();
    Ok(dirs)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn every_overlay_renders_valid_objects_and_a_filter_config_that_compiles() -> TestResult {
    let base_dir = istio().join("base");
    let base = render(&base_dir)?;
    let service = of_kind(&base, "Service");
    let [service] = service.as_slice() else {
        return Err("the base has one Service".into());
    };
    let cluster = format!(
        "outbound|{}||{}.{}.svc.cluster.local",
        service["spec"]["ports"][0]["port"],
        service["metadata"]["name"].as_str().ok_or("name")?,
        service["metadata"]["namespace"]
            .as_str()
            .ok_or("namespace")?
    );
    let dirs = overlays()?;
    assert_eq!(dirs.len(), 3, "ingress-gateway, gateway-api and sidecars");
    let mut rendered = vec![(base_dir, base.clone())];
    for dir in dirs {
        let docs = render(&dir)?;
        rendered.push((dir, docs));
    }
    for (dir, docs) in rendered {
        validate(&docs)?.map_err(|p| format!("{}:\n{p}", dir.display()))?;
        assert!(
            of_kind(&docs, "Secret").is_empty(),
            "{}: no Secret is kept in the repository",
            dir.display()
        );
        assert_eq!(of_kind(&docs, "Deployment").len(), 1, "{}", dir.display());
        for plugin in of_kind(&docs, "WasmPlugin") {
            let spec = &plugin["spec"];
            assert_eq!(spec["phase"], "AUTHN");
            assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
            assert!(
                spec["url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("oci://"))
            );
            assert!(
                spec["sha256"]
                    .as_str()
                    .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())),
                "{}: sha256 is a hex digest",
                dir.display()
            );
            assert!(
                spec.get("selector").is_some() != spec.get("targetRefs").is_some(),
                "a selector or targetRefs"
            );
            let config: FilterConfig = serde_json::from_value(spec["pluginConfig"].clone())?;
            let sync = config
                .sync_settings()?
                .ok_or("the overlays follow policy-sync")?;
            assert_eq!(sync.cluster, cluster, "the cluster of the base's Service");
            assert!(matches!(Start::new(&config)?, Start::Pending { .. }));
        }
    }
    // The standalone WasmPlugin with an inline configuration validates too.
    let text = std::fs::read_to_string(istio().join("wasmplugin.yaml"))?;
    let inline: Value = serde_yaml_ng::from_str(&text)?;
    validate(&[inline])?.map_err(|p| format!("istio/wasmplugin.yaml:\n{p}"))?;
    Ok(())
}

#[test]
fn policy_sync_runs_as_an_operator_expects() -> TestResult {
    let docs = render(&istio().join("base"))?;
    let deployment = *of_kind(&docs, "Deployment").first().ok_or("Deployment")?;
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the HorizontalPodAutoscaler owns the replica count"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    // Secrets only by reference: no literal database URL or key in the manifests.
    for env in container["env"].as_array().ok_or("env")? {
        if let Some(v) = env["value"].as_str() {
            assert!(!v.contains("://"), "a literal URL in {env}");
        }
    }
    assert!(
        container["env"]
            .as_array()
            .ok_or("env")?
            .iter()
            .any(|e| e["valueFrom"]["secretKeyRef"]["name"] == "policy-sync-database")
    );
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "policy-sync-signing-key"
    );
    for kind in [
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "Job",
        "DestinationRule",
        "PeerAuthentication",
    ] {
        assert_eq!(of_kind(&docs, kind).len(), 1, "one {kind}");
    }
    let hpa = *of_kind(&docs, "HorizontalPodAutoscaler")
        .first()
        .ok_or("hpa")?;
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    let job = *of_kind(&docs, "Job").first().ok_or("job")?;
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["migrate"])
    );
    Ok(())
}

/// Prometheus has no mesh certificate: it scrapes policy-sync's health-and-metrics port, the
/// one port the PeerAuthentication leaves out of strict mutual TLS, which the Deployment's
/// arguments open and which the NetworkPolicy lets the monitoring namespace (and only it) reach.
#[test]
fn prometheus_scrapes_the_one_port_outside_strict_mtls() -> TestResult {
    let docs = render(&istio().join("base"))?;
    let one = |kind: &str| -> Result<Value, Box<dyn Error>> {
        Ok((*of_kind(&docs, kind).first().ok_or(kind.to_owned())?).clone())
    };
    let scraped = one("ServiceMonitor")?["spec"]["endpoints"][0]["port"].clone();
    let service = one("Service")?;
    let target = service["spec"]["ports"]
        .as_array()
        .ok_or("ports")?
        .iter()
        .find(|p| p["name"] == scraped)
        .ok_or("the ServiceMonitor's port is not the Service's")?["targetPort"]
        .clone();
    let deployment = one("Deployment")?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = container["ports"]
        .as_array()
        .ok_or("container ports")?
        .iter()
        .find(|p| p["name"] == target)
        .ok_or("the Service's targetPort is no container port")?["containerPort"]
        .as_u64()
        .ok_or("containerPort")?;
    let args: Vec<&str> = container["args"]
        .as_array()
        .ok_or("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let opened = args
        .iter()
        .position(|a| *a == "--metrics-listen")
        .and_then(|i| args.get(i + 1))
        .ok_or("no --metrics-listen")?;
    assert!(opened.ends_with(&format!(":{port}")), "{opened}");
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"], "http",
        "the filters' port is another"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], target, "{probe}");
    }

    let peer = one("PeerAuthentication")?;
    assert_eq!(peer["spec"]["mtls"]["mode"], "STRICT");
    assert_eq!(
        peer["spec"]["portLevelMtls"],
        json!({ port.to_string(): { "mode": "PERMISSIVE" } }),
        "only the metrics port is permissive"
    );
    assert_eq!(
        peer["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    let rules = one("NetworkPolicy")?["spec"]["ingress"].clone();
    let rules = rules.as_array().ok_or("ingress rules")?;
    let monitoring = json!({ "kubernetes.io/metadata.name": "monitoring" });
    for rule in rules {
        let from_monitoring = rule["from"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["namespaceSelector"]["matchLabels"] == monitoring);
        let ports: Vec<u64> = rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        if from_monitoring {
            assert_eq!(ports, [port], "Prometheus reaches the metrics port only");
        } else {
            assert!(!ports.contains(&port) && !ports.is_empty(), "{rule}");
        }
    }
    assert!(
        rules
            .iter()
            .any(|r| r["ports"][0]["port"].as_u64() == Some(port)),
        "the monitoring namespace reaches the metrics port"
    );
    Ok(())
}

/// The validator is not a formality: an unknown field, a wrong enum value, a wrong type and a
/// kind without a schema are each refused.
#[test]
fn the_validator_refuses_what_the_api_server_would() -> TestResult {
    let docs = render(&istio().join("overlays/sidecars"))?;
    let find = |kind: &str| -> Result<Value, Box<dyn Error>> {
        Ok((*of_kind(&docs, kind).first().ok_or(kind.to_owned())?).clone())
    };
    let mut unknown = find("Deployment")?;
    unknown["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = json!({});
    let mut phase = find("WasmPlugin")?;
    phase["spec"]["phase"] = json!("AUTHENTICATE");
    let mut port = find("Service")?;
    port["spec"]["ports"][0]["port"] = json!("8080");
    let mut kind = find("Service")?;
    kind["kind"] = json!("Servicee");
    for (bad, expect) in [
        (unknown, "readinesProbe"),
        (phase, "allowed values"),
        (port, "must be integer"),
        (kind, "no schema"),
    ] {
        let problems = validate(&[bad])?
            .err()
            .ok_or(format!("accepted an object with {expect}"))?;
        assert!(problems.contains(expect), "{expect}: {problems}");
    }
    Ok(())
}
