//! `read_part` returns exactly the bytes the mapping holds, for whole tensors and sub-ranges,
//! and refuses slices that are not from the file.

use amalgam_io::{ModelFolder, SafetensorsFile};
use std::path::Path;

fn seed() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/seed-lerp")
}

#[test]
fn positioned_reads_equal_the_mapping() {
    let folder = ModelFolder::open(seed().join("models/expert-3")).unwrap();
    for name in folder.names() {
        let t = folder.get(name).unwrap();
        let mut buf = vec![0u8; t.data.len()];
        folder.read_part(t.data, &mut buf).unwrap();
        assert!(buf == t.data, "{name}");
        if t.data.len() > 10 {
            let part = &t.data[3..t.data.len() - 5];
            let mut b = vec![0u8; part.len()];
            folder.read_part(part, &mut b).unwrap();
            assert!(b == part, "{name} sub-range");
        }
    }
    let file = SafetensorsFile::open(seed().join("models/mixtral/model.safetensors")).unwrap();
    let foreign = vec![1u8; 16];
    let mut b = vec![0u8; 16];
    assert!(!file.read_part(&foreign, &mut b).unwrap());
    let t = file.tensors()[0].clone();
    let part = file.get(&t.name).unwrap().data;
    let mut wrong_len = vec![0u8; part.len() + 1];
    assert!(!file.read_part(part, &mut wrong_len).unwrap());
}
