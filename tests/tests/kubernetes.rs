//! The Trace resource on a real kube-apiserver (tests/cluster/up):
//! deploy/crd.yaml is served, refuses what sigvisor refuses (the API server
//! and `sigvisor check` agree on every case), lets each node's agent select
//! its own Traces by `spec.node`, and has a status subresource.

use std::process::Output;

use sigvisor_tests::cluster::*;
use sigvisor_tests::*;

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn trace(name: &str, node: &str, spec: &str) -> String {
    format!(
        "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: {name}\n  namespace: gadget\n\
         spec:\n  node: {node}\n  gadget: signal\n{spec}"
    )
}

#[test]
fn the_trace_crd_refuses_what_sigvisor_refuses() {
    let Some(cluster) = Cluster::with_traces("kubernetes-crd") else { return };
    assert!(cluster.kubectl(&["create", "namespace", "gadget"]).status.success());

    // Each case: the spec lines, whether sigvisor accepts it, and what the
    // API server's refusal names.
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("good", "  runMode: Auto\n  outputMode: Stream\n  parameters:\n    signal: SIGUSR1\n    when: 2..5\n    min-threads: \"2\"\n    comm: go*\n    stacks: \"true\"\n    handler: any\n    syscalls: close,openat\n", None),
        ("filtered", "  filter:\n    namespace: shop\n    podname: web-0\n    containerName: web\n    labels:\n      team: blue\n", None),
        ("run-mode", "  runMode: Sometimes\n", Some("spec.runMode")),
        ("output-mode", "  outputMode: ExternalResource\n", Some("spec.outputMode")),
        ("unknown-parameter", "  parameters:\n    colour: blue\n", Some("unknown field \"spec.parameters.colour\"")),
        ("stacks", "  parameters:\n    stacks: maybe\n", Some("spec.parameters.stacks")),
        ("handler", "  parameters:\n    handler: mine\n", Some("spec.parameters.handler")),
        ("min-threads", "  parameters:\n    min-threads: \"0\"\n", Some("spec.parameters.min-threads")),
        ("when", "  parameters:\n    when: sometimes\n", Some("spec.parameters.when")),
        ("signal", "  parameters:\n    signal: \"sig ill\"\n", Some("spec.parameters.signal")),
        ("not-a-string", "  parameters:\n    min-threads: 2\n", None),
    ];
    let dir = scratch("kubernetes-crd-cases");
    for (name, spec, refused) in cases {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, trace(name, "node-a", spec)).expect("write the case");
        let ours = output_bounded(sigvisor().arg("check").arg(&file), "sigvisor check");
        let theirs = cluster.kubectl(&["apply", "--dry-run=server", "-f", file.to_str().expect("path")]);
        match refused {
            None => {
                assert!(ours.status.success(), "{name}: sigvisor refused it: {}", said(&ours));
                // An integer where a string is due: the API server's
                // refusal, and sigvisor's acceptance, are both right (a
                // profile file may say 2; a resource is typed).
                if *name != "not-a-string" {
                    assert!(theirs.status.success(), "{name}: the API server refused it: {}", said(&theirs));
                }
            }
            Some(field) => {
                assert_eq!(exit_code(&ours), 2, "{name}: sigvisor accepted it");
                assert!(!theirs.status.success(), "{name}: the API server accepted it");
                assert!(said(&theirs).contains(field), "{name}: {}", said(&theirs));
            }
        }
    }
    // The seed document and the shipped profiles are accepted as they are.
    for profile in ["profiles/signal.yaml", "profiles/gosignal.yaml", "profiles/who-closed.yaml"] {
        let out = cluster.kubectl(&[
            "apply",
            "--dry-run=server",
            "-n",
            "gadget",
            "-f",
            repo().join(profile).to_str().expect("path"),
        ]);
        assert!(out.status.success(), "{profile}: {}", said(&out));
    }

    // Each node's agent lists only its own Traces.
    for (name, node) in [("on-a", "node-a"), ("on-b", "node-b")] {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, trace(name, node, "")).expect("write");
        cluster.apply(&file);
    }
    let out = cluster.kubectl(&["get", "traces", "-A", "--field-selector", "spec.node=node-a", "-o", "name"]);
    assert_eq!(said(&out).trim(), "trace.gadget.kinvolk.io/on-a", "{}", said(&out));

    // The status is a subresource: its own patch, shown in the columns.
    let patch = |body: &str, sub: &[&str]| {
        let out = cluster.kubectl(
            &[&["patch", "-n", "gadget", "trace", "on-a", "--type=merge", "-p", body], sub].concat(),
        );
        assert!(out.status.success(), "{}", said(&out));
    };
    patch(
        r#"{"status":{"state":"Started","signals":3,"output":"signalsSent: 3\n"}}"#,
        &["--subresource=status"],
    );
    let out = cluster.kubectl(&["get", "-n", "gadget", "trace", "on-a"]);
    let table = said(&out);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "NODE", "GADGET", "STATE", "SIGNALS", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..5], ["on-a", "node-a", "signal", "Started", "3"], "{table}");
    // A patch of the status through the main resource changes nothing.
    patch(r#"{"status":{"state":"Stopped"}}"#, &[]);
    let out = cluster.kubectl(&["get", "-n", "gadget", "trace", "on-a", "-o", "jsonpath={.status.state}"]);
    assert_eq!(said(&out), "Started");

    // down, then up again: the same data, the same Traces.
    cluster.restart();
    let out = cluster.kubectl(&["get", "-n", "gadget", "trace", "on-a", "-o", "jsonpath={.status.state}"]);
    assert_eq!(said(&out), "Started");
}

/// deploy/rbac.yaml gives the agent's ServiceAccount what it needs and
/// nothing else, as the API server's own authorizer answers it.
#[test]
fn the_agent_may_do_what_it_needs_and_no_more() {
    let Some(cluster) = Cluster::with_traces("kubernetes-rbac") else { return };
    cluster.apply(&repo().join("deploy/rbac.yaml"));
    let agent = "system:serviceaccount:sigvisor:sigvisor";
    // `RESOURCE/status` names the status subresource (kubectl reads a bare
    // `a/b` as the object b of a).
    let may = |verb: &str, resource: &str| {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let out =
            cluster.kubectl(&["auth", "can-i", verb, resource, "--subresource", sub, "--as", agent, "-A"]);
        said(&out).trim() == "yes"
    };
    for (verb, resource) in [
        ("get", "traces.gadget.kinvolk.io"),
        ("list", "traces.gadget.kinvolk.io"),
        ("watch", "traces.gadget.kinvolk.io"),
        ("patch", "traces.gadget.kinvolk.io"),
        ("patch", "traces.gadget.kinvolk.io/status"),
        ("update", "traces.gadget.kinvolk.io/status"),
        ("list", "pods"),
        ("watch", "pods"),
    ] {
        assert!(may(verb, resource), "the agent may not {verb} {resource}");
    }
    for (verb, resource) in [
        ("create", "traces.gadget.kinvolk.io"),
        ("delete", "traces.gadget.kinvolk.io"),
        ("delete", "traces.gadget.kinvolk.io/status"),
        ("update", "traces.gadget.kinvolk.io"),
        ("create", "pods"),
        ("get", "secrets"),
        ("patch", "pods"),
    ] {
        assert!(!may(verb, resource), "the agent may {verb} {resource}");
    }
}

/// Polls `what` until it holds, for at most 20 s.
fn eventually(what: &str, holds: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !holds() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `serve --kubernetes`: a Trace created in the cluster for this node is
/// taken, started by the operation annotation (which the agent removes),
/// signals a program precisely, and its status (state and counters) shows
/// in the API, also after the API server was down meanwhile; a Trace for
/// another node is never acted on, nor a File output outside the agent's
/// directory; a deleted one stops at once.
#[test]
fn serve_acts_on_the_traces_of_its_node() {
    use sigvisor_tests::containers::{launch, report, Server};
    let Some(cluster) = Cluster::with_traces("kubernetes-agent") else { return };
    assert!(cluster.kubectl(&["create", "namespace", "gadget"]).status.success());
    let kubeconfig = cluster.kubeconfig.to_str().expect("path").to_owned();
    let agent = ["--kubernetes", "--kubeconfig", &kubeconfig, "--node", "node-a"];
    let mut server = Server::with_profiles("kubernetes-agent", &agent, &[]);
    let dir = scratch("kubernetes-agent-traces");
    for (name, node) in [("who", "node-a"), ("elsewhere", "node-b")] {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, trace(name, node, "  runMode: Manual\n")).expect("write");
        cluster.apply(&file);
    }
    let field = |name: &str, path: &str| {
        let out =
            cluster.kubectl(&["get", "-n", "gadget", "trace", name, "-o", &format!("jsonpath={{{path}}}")]);
        said(&out)
    };
    eventually("the agent writes the status of its Trace", || !field("who", ".status.output").is_empty());
    assert_eq!(field("who", ".status.state"), "");

    let annotate = ["annotate", "-n", "gadget", "trace", "who", "gadget.kinvolk.io/operation=start"];
    assert!(cluster.kubectl(&annotate).status.success());
    eventually("started, the annotation consumed", || {
        field("who", ".status.state") == "Started"
            && field("who", r".metadata.annotations.gadget\.kinvolk\.io/operation").is_empty()
    });

    let out = wait_bounded(launch(&server, &["--closes", "50"]), "the closer under serve");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    eventually("the signals in the status", || field("who", ".status.signals") == "50");
    assert_eq!(field("elsewhere", ".status"), "", "another node's Trace is never acted on");

    // The API server goes away: the program is supervised as before; back,
    // the status catches up.
    let down = std::process::Command::new(repo().join("tests/cluster/down")).arg(&cluster.dir).status();
    assert!(down.is_ok_and(|s| s.success()));
    let out = wait_bounded(launch(&server, &["--closes", "20"]), "the closer, the API server down");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    cluster.restart();
    eventually("the status catches up", || field("who", ".status.signals") == "70");

    // Whoever may create a Trace may not write files on the node: a File
    // output outside the agent's output directory is refused, and said.
    let file = dir.join("z-escape.yaml");
    let escape = "  runMode: Auto\n  outputMode: File\n  output: ../../../tmp/sigvisor-escape.jsonl\n";
    std::fs::write(&file, trace("z-escape", "node-a", escape)).expect("write");
    cluster.apply(&file);
    eventually("the escape refused", || {
        field("z-escape", ".status.operationError").contains("must be a relative path inside")
    });
    assert!(!std::path::Path::new("/tmp/sigvisor-escape.jsonl").exists());

    // serve restarted while the API server is away: the Trace comes back
    // from serve's state, started, and the program is signalled.
    server.kill();
    let down = std::process::Command::new(repo().join("tests/cluster/down")).arg(&cluster.dir).status();
    assert!(down.is_ok_and(|s| s.success()));
    server.restart();
    // Until serve has taken the agent socket back, its keeper answers.
    let keeper_log = server.state.join("keeper.log");
    eventually("serve took everything back from its keeper", || {
        std::fs::read_to_string(&keeper_log).is_ok_and(|l| l.matches("supervisor attached").count() >= 2)
    });
    let out = wait_bounded(launch(&server, &["--closes", "10"]), "the closer, serve restarted, no API");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    cluster.restart();
    eventually("the status catches up again", || {
        field("who", ".status.signals").parse().is_ok_and(|n: u64| n >= 10)
    });

    // Deleted in the cluster while serve is down: gone when serve is back.
    server.kill();
    assert!(cluster.kubectl(&["delete", "-n", "gadget", "trace", "who"]).status.success());
    server.restart();
    eventually("a deleted Trace is gone from serve", || {
        let out = output_bounded(sigvisor().args(["get", "traces", "--control"]).arg(&server.control), "get");
        !String::from_utf8_lossy(&out.stdout).contains("who")
    });
}

/// Pod labels never reach a runtime: the agent reads them from the Pods of
/// its node, and `spec.filter.labels` selects the containers of the pods
/// that have them (by the CRI's pod name and namespace annotations), crun's
/// and runc's alike.
#[test]
fn pod_labels_select_containers() {
    use sigvisor_tests::containers::*;
    if !require_tools() {
        return;
    }
    let Some(cluster) = Cluster::with_traces("kubernetes-pods") else { return };
    let dir = scratch("kubernetes-pods-objects");
    let objects = dir.join("objects.yaml");
    let pod = |name: &str, team: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{team: {team}}}}}\n\
             spec: {{nodeName: node-a, containers: [{{name: c, image: busybox}}]}}\n---\n"
        )
    };
    let traces = [
        trace("blue", "node-a", "  runMode: Auto\n  filter:\n    labels:\n      team: blue\n"),
        trace("z-everyone", "node-a", "  runMode: Auto\n"),
    ];
    let text = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: gadget}}\n---\n{}{}{}", pod("web-0", "blue"), pod("web-1", "red"), traces.join("---\n"));
    std::fs::write(&objects, text).expect("write");
    cluster.apply(&objects);
    let kubeconfig = cluster.kubeconfig.to_str().expect("path").to_owned();
    let server = Server::with_profiles(
        "kubernetes-pods",
        &["--kubernetes", "--kubeconfig", &kubeconfig, "--node", "node-a"],
        &[],
    );
    let signals = |name: &str| {
        let out =
            cluster.kubectl(&["get", "-n", "gadget", "trace", name, "-o", "jsonpath={.status.signals}"]);
        said(&out)
    };
    eventually("the agent writes both statuses", || signals("blue") == "0" && signals("z-everyone") == "0");
    // The pods were listed with the Traces; a moment more for the store.
    std::thread::sleep(std::time::Duration::from_secs(1));
    // Real containers with a kubelet's CRI annotations: crun hands its
    // listener over itself, runc's entrypoint is wrapped (runc 1.1).
    for (pod, closes, runtime) in [("web-0", "30", "crun"), ("web-1", "20", "runc")] {
        let bundle = bundle(&format!("kubernetes-pods-{pod}"), &["/bin/closer", "--closes", closes]);
        edit_config(&bundle, |c| {
            c["annotations"] = serde_json::json!({
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.sandbox-name": pod,
                "io.kubernetes.cri.container-name": "c",
                "io.kubernetes.cri.container-type": "container",
            })
        });
        patch(&bundle, &server.socket, &["--runtime", runtime]);
        let id = container_id(pod);
        let out = if runtime == "crun" { crun_run(&bundle, &id) } else { runc_run(&bundle, &id) };
        assert_eq!(exit_code(&out), 0, "{runtime}: {}", String::from_utf8_lossy(&out.stderr));
        assert_precise(&report(&out));
    }
    eventually("each pod's closes under its Trace", || {
        signals("blue") == "30" && signals("z-everyone") == "20"
    });
}

/// Two agents on one API server, as two nodes: each acts on its own
/// Traces only and writes only their status; `filter.namespace`,
/// `podname` and `containerName` select by the CRI annotations a kubelet's
/// runtime gives each container.
#[test]
fn two_nodes_each_act_on_their_own_traces() {
    use sigvisor_tests::containers::Server;
    let Some(cluster) = Cluster::with_traces("kubernetes-nodes") else { return };
    assert!(cluster.kubectl(&["create", "namespace", "gadget"]).status.success());
    let kubeconfig = cluster.kubeconfig.to_str().expect("path").to_owned();
    let agent = |node: &str| {
        let args = ["--kubernetes", "--kubeconfig", kubeconfig.as_str(), "--node", node];
        Server::with_profiles(&format!("kubernetes-node-{node}"), &args, &[])
    };
    let (a, b) = (agent("a"), agent("b"));
    let dir = scratch("kubernetes-nodes-traces");
    let cases = [
        ("a-shop", "a", "  filter:\n    namespace: shop\n"),
        ("a-web-0", "a", "  filter:\n    podname: web-0\n"),
        ("b-cart", "b", "  filter:\n    containerName: cart\n"),
        ("b-all", "b", ""),
    ];
    for (name, node, filter) in cases {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, trace(name, node, &format!("  runMode: Auto\n{filter}"))).expect("write");
        cluster.apply(&file);
    }
    let signals = |name: &str| {
        let out =
            cluster.kubectl(&["get", "-n", "gadget", "trace", name, "-o", "jsonpath={.status.signals}"]);
        said(&out)
    };
    eventually("each agent writes its Traces' status", || cases.iter().all(|(n, ..)| signals(n) == "0"));
    let container = |server: &Server, pod, closes| pod_container(&server.socket, pod, closes);
    // Each container is signalled by the first Trace (by name) of its agent
    // that selects it, or not at all.
    assert_precise(&container(&a, ("shop", "web-0", "web"), "10")); // a-shop
    assert_precise(&container(&a, ("other", "web-0", "web"), "20")); // a-web-0
    assert_eq!(container(&a, ("other", "web-1", "cart"), "5")["signals"], 0, "no Trace of a selects it");
    assert_precise(&container(&b, ("shop", "web-1", "cart"), "30")); // b-all comes first by name
    eventually("each Trace counts its own node's containers", || {
        signals("a-shop") == "10"
            && signals("a-web-0") == "20"
            && signals("b-all") == "30"
            && signals("b-cart") == "0"
    });
    // Each agent has exactly its node's Traces.
    for (server, own) in [(&a, ["a-shop", "a-web-0"]), (&b, ["b-all", "b-cart"])] {
        let out = output_bounded(sigvisor().args(["get", "traces", "--control"]).arg(&server.control), "get");
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        for (name, ..) in cases {
            assert_eq!(
                listed.contains(name),
                own.contains(&name),
                "{name} on {:?}:\n{listed}",
                server.socket
            );
        }
    }
}
