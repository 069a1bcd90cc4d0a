//! Every example configuration shipped in `deploy/`, and the embedded default, must load.
use std::path::{Path, PathBuf};

use hitless::config::{Config, DEFAULT_CONFIG, Mode};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_tomls() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy"))
        .expect("deploy/ exists")
        .map(|e| e.expect("readable deploy/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_deploy_example_loads() {
    let files = deploy_tomls();
    assert!(!files.is_empty(), "no deploy/*.toml found");
    for path in &files {
        let cfg = Config::load(path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        assert!(!cfg.channels.is_empty(), "{}: no channels", path.display());
        assert_eq!(cfg.path.as_deref(), Some(path.as_path()));
    }
}

#[test]
fn two_network_site_example() {
    let cfg = Config::load(&root().join("deploy/site-two-networks.toml")).unwrap();
    assert_eq!(cfg.node.name, "gw-site1-a");
    let names: Vec<&str> = cfg.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["news", "sports", "weather"]);
    for ch in &cfg.channels {
        assert_eq!(ch.mode, Mode::Smpte2022_7);
        assert_eq!(ch.sources.len(), 2, "{}: a red and a blue leg", ch.name);
        for src in &ch.sources {
            assert!(src.url.is_multicast(), "{} {}", ch.name, src.name);
            assert!(
                src.url.iface.is_some() && src.url.source.is_some(),
                "{} {}",
                ch.name,
                src.name
            );
        }
        for out in &ch.outputs {
            assert!(out.url.ttl.is_some(), "{}: outputs set a TTL", ch.name);
        }
    }
    assert_eq!(cfg.channel("sports").unwrap().outputs.len(), 3);
}

#[test]
fn embedded_default_file_loads() {
    let path = root().join("src/default.toml");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), DEFAULT_CONFIG);
    let cfg = Config::load(&path).unwrap();
    assert_eq!(cfg.channels.len(), 1);
    assert_eq!(cfg.channels[0].name, "default");
    assert_eq!(cfg.node.http_listen.to_string(), "127.0.0.1:9000");
    Config::from_str(DEFAULT_CONFIG, None).unwrap();
}
