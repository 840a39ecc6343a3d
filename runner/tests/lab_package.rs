//! Loading and checking lab packages.

mod common;

use sanhak_runner::lab::Lab;

fn load_with(edit: impl FnOnce(&std::path::Path, String) -> String) -> String {
    let (_tmp, dir) = common::lab_copy();
    let text = std::fs::read_to_string(dir.join("lab.toml")).unwrap();
    let text = edit(&dir, text);
    std::fs::write(dir.join("lab.toml"), text).unwrap();
    Lab::load(&dir).unwrap_err().to_string()
}

#[test]
fn the_shipped_lab_loads_and_its_schema_serialises() {
    let lab = Lab::load(&common::fashion_dir()).unwrap();
    assert_eq!(lab.id(), "fashion-transfer");
    let json = serde_json::to_value(lab.schema().unwrap()).unwrap();
    assert_eq!(json["param"][0]["name"], "learning_rate");
}

#[test]
fn path_escape_is_refused() {
    let e = load_with(|_, t| t.replace("data/train-images.idx3", "../../etc/passwd"));
    assert!(
        e.contains("lab.toml") && e.contains("data.train.images") && e.contains("no `..`"),
        "{e}"
    );
}

#[test]
fn symlink_out_of_the_folder_is_refused() {
    let e = load_with(|dir, t| {
        std::os::unix::fs::symlink("/etc/hostname", dir.join("data/link.idx3")).unwrap();
        t.replace("data/train-images.idx3", "data/link.idx3")
    });
    assert!(e.contains("resolves inside"), "{e}");
}

#[test]
fn graded_split_must_be_hidden_and_training_splits_public() {
    let e = load_with(|_, t| t.replace("split = \"test\"", "split = \"valid\""));
    assert!(e.contains("grading.split") && e.contains("hidden/"), "{e}");
    let e = load_with(|_, t| t.replace("train_split = \"train\"", "train_split = \"test\""));
    assert!(
        e.contains("data.test.images") && e.contains("under data/"),
        "{e}"
    );
}

#[test]
fn missing_files_are_named() {
    let e = load_with(|dir, t| {
        std::fs::remove_file(dir.join("DATA.md")).unwrap();
        t
    });
    assert!(e.contains("DATA.md"), "{e}");
    let e = load_with(|_, t| t.replace("hidden/test-labels.idx1", "hidden/nope.idx1"));
    assert!(
        e.contains("data.test.labels") && e.contains("hidden/nope.idx1"),
        "{e}"
    );
}

#[test]
fn bad_rubric_and_settings_are_named() {
    let e = load_with(|_, t| t.replace("target = 0.90", "target = 0.1"));
    assert!(e.contains("grading.target"), "{e}");
    let e = load_with(|_, t| t.replace("public_fraction = 0.5", "public_fraction = 1.5"));
    assert!(e.contains("grading.public_fraction"), "{e}");
    let e = load_with(|_, t| t.replace("hidden = 128", "hidden = 128\nwidth = 3"));
    assert!(e.contains("program.settings") && e.contains("width"), "{e}");
    let e = load_with(|_, t| t.replace("metric = \"accuracy\"", "metric = \"f1\""));
    assert!(e.contains("grading.metric"), "{e}");
    let e = load_with(|_, t| {
        t.replace(
            "choices = [\"conv1\", \"conv2\", \"fc\"]",
            "choices = [\"conv1\", \"head\"]",
        )
    });
    assert!(e.contains("frozen"), "{e}");
}
