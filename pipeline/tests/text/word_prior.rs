use comp_pipeline::tokenize::{
    CaptionTokenizer, DEMO_VOCAB_SIZE, TextConfig, train_demo_tokenizer,
};
use comp_pipeline::word_prior::{WordPrior, WordPriorError};

use crate::{demo_captions, python};

#[test]
fn counts_caption_tokens_only() {
    let mut p = WordPrior::new(6);
    p.add(&[1, 2, 2]).unwrap();
    p.add(&[5]).unwrap();
    assert_eq!(p.counts, vec![0, 1, 2, 0, 0, 1]);
    assert_eq!(p.num_captions, 2);
    assert!(matches!(
        p.add(&[6]),
        Err(WordPriorError::IdOutOfRange { id: 6, .. })
    ));
    assert!(matches!(
        p.add(&[-1]),
        Err(WordPriorError::IdOutOfRange { .. })
    ));
    assert_eq!(p.num_captions, 2, "a refused caption is not counted");
    let probs = p.probabilities(0.0);
    assert_eq!(probs, vec![0.0, 0.25, 0.5, 0.0, 0.0, 0.25]);
    let smooth = p.probabilities(1.0);
    assert!((smooth.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(smooth[0], 1.0 / 10.0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let captions = demo_captions();
    train_demo_tokenizer(&captions, DEMO_VOCAB_SIZE, &path).unwrap();
    let tok = CaptionTokenizer::from_file(&path, &TextConfig::default()).unwrap();
    let with_empty = captions.iter().map(String::as_str).chain([""]);
    let (prior, skipped) = WordPrior::from_captions(with_empty, &tok).unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(prior.num_captions, captions.len() as u64);
    assert_eq!(prior.vocab_size(), tok.vocab_size());
    // Same as counting the caption spans the loader produces; template and placeholders never count.
    let mut by_span = WordPrior::new(tok.vocab_size());
    for c in &captions {
        by_span
            .add(tok.encode(c, 9).unwrap().caption_ids())
            .unwrap();
    }
    assert_eq!(prior, by_span);
    assert_eq!(prior.counts[tok.image_token_id() as usize], 0);
    assert_eq!(
        prior.counts[0..6],
        [0; 6],
        "no special token in any caption"
    );
    // Merging halves equals the whole.
    let (a, _) = WordPrior::from_captions(&captions[..30], &tok).unwrap();
    let (mut b, _) = WordPrior::from_captions(&captions[30..], &tok).unwrap();
    b.merge(&a).unwrap();
    assert_eq!(b, prior);
}

#[test]
fn safetensors_round_trip_readable_by_python() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = WordPrior::new(1000);
    for i in 0..500i64 {
        p.add(&[i % 997, (i * 7) % 1000, 3]).unwrap();
    }
    let path = dir.path().join("word_prior.safetensors");
    p.save(&path).unwrap();
    assert_eq!(WordPrior::load(&path).unwrap(), p);
    let out = python(
        r#"
import sys, json
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    c = f.get_tensor("counts")
    print(json.dumps({"dtype": str(c.dtype), "shape": list(c.shape), "sum": int(c.sum()), "c3": int(c[3]),
                      "meta": f.metadata()}))
"#,
        &[&path],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["dtype"], "int64");
    assert_eq!(v["shape"], serde_json::json!([1000]));
    assert_eq!(v["sum"], p.total());
    assert_eq!(v["c3"], p.counts[3]);
    assert_eq!(v["meta"]["num_captions"], "500");
    assert_eq!(v["meta"]["vocab_size"], "1000");

    // A float prior written by Python loads too.
    let f64_path = dir.path().join("f64.safetensors");
    python(
        r#"
import sys, numpy as np
from safetensors.numpy import save_file
save_file({"counts": np.array([0.0, 2.0, 5.0])}, sys.argv[1], metadata={"num_captions": "3"})
"#,
        &[&f64_path],
    );
    let q = WordPrior::load(&f64_path).unwrap();
    assert_eq!(q.counts, vec![0, 2, 5]);
    assert_eq!(q.num_captions, 3);
    std::fs::write(dir.path().join("bad"), b"not safetensors").unwrap();
    assert!(matches!(
        WordPrior::load(&dir.path().join("bad")),
        Err(WordPriorError::Format { .. })
    ));
}
