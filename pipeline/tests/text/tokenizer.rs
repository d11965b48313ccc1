use comp_pipeline::IGNORE_INDEX;
use comp_pipeline::tokenize::{
    CaptionTokenizer, DEMO_VOCAB_SIZE, Template, TemplateError, TextConfig, TokenizeError,
    train_demo_tokenizer,
};

use crate::{demo_captions, python};

fn trained(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("tokenizer.json");
    train_demo_tokenizer(demo_captions(), DEMO_VOCAB_SIZE, &path).unwrap();
    path
}

#[test]
fn training_is_deterministic_and_has_the_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let a = trained(&dir);
    let b = dir.path().join("again.json");
    train_demo_tokenizer(demo_captions(), DEMO_VOCAB_SIZE, &b).unwrap();
    let (a_bytes, b_bytes) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(
        a_bytes, b_bytes,
        "same captions must give a byte-identical tokenizer.json"
    );
    let tok = CaptionTokenizer::from_file(&a, &TextConfig::default()).unwrap();
    assert!(
        tok.vocab_size() > 262 && tok.vocab_size() <= DEMO_VOCAB_SIZE,
        "{}",
        tok.vocab_size()
    );
    assert_eq!(tok.image_token_id(), 5);
    // Merges were learnt: a frequent word is one token, not one per byte.
    let (ids, _) = tok
        .encode_caption("a red square on a white background.")
        .unwrap();
    assert!(ids.len() < 20, "{ids:?}");
    assert!(matches!(
        train_demo_tokenizer(["x"], 100, &dir.path().join("small.json")),
        Err(TokenizeError::VocabTooSmall { .. })
    ));
}

#[test]
fn python_tokenizers_gives_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = trained(&dir);
    let tok = CaptionTokenizer::from_file(&path, &TextConfig::default()).unwrap();
    let captions = [
        "A red square on a white background.",
        "three small dots near the centre, slightly rotated",
        "Unseen words: zebra crossing at night 42!",
        "  leading spaces and ünïcödé — 日本語 😀",
        "tabs\tand\nnewlines",
    ];
    let caps_file = dir.path().join("captions.json");
    std::fs::write(&caps_file, serde_json::to_string(&captions).unwrap()).unwrap();
    let script = r#"
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
for c in json.load(open(sys.argv[2])):
    print(json.dumps(tok.encode(c, add_special_tokens=False).ids))
"#;
    let out = python(script, &[&path, &caps_file]);
    let expected: Vec<Vec<i64>> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(expected.len(), captions.len());
    for (c, want) in captions.iter().zip(expected) {
        let (ids, truncated) = tok.encode_caption(c).unwrap();
        assert!(!truncated);
        assert_eq!(ids, want, "caption {c:?}");
        // Byte-level BPE is lossless.
        assert_eq!(tok.decode(&ids).unwrap(), *c);
    }
}

fn check_layout(tok: &CaptionTokenizer, caption: &str, n_image: usize) {
    let enc = tok.encode(caption, n_image).unwrap();
    assert_eq!(enc.input_ids.len(), enc.labels.len());
    let pad = tok.image_token_id();
    assert_eq!(enc.input_ids.iter().filter(|&&t| t == pad).count(), n_image);
    // The placeholders are contiguous.
    let first = enc.input_ids.iter().position(|&t| t == pad).unwrap_or(0);
    assert!(
        enc.input_ids[first..first + n_image]
            .iter()
            .all(|&t| t == pad)
    );
    let (alone, _) = tok.encode_caption(caption).unwrap();
    assert_eq!(
        enc.caption_ids(),
        &alone[..],
        "span ids must equal the caption-alone ids"
    );
    let [s, e] = enc.caption_span.map(|x| x as usize);
    for (i, (&id, &label)) in enc.input_ids.iter().zip(&enc.labels).enumerate() {
        if (s..=e).contains(&i) {
            assert_eq!(label, id, "position {i} must be supervised");
        } else {
            assert_eq!(label, IGNORE_INDEX, "position {i} must be ignored");
        }
    }
    assert!(e < enc.input_ids.len(), "an end token follows the caption");
}

#[test]
fn templates_place_placeholders_caption_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = trained(&dir);
    let comp = CaptionTokenizer::from_file(&path, &TextConfig::default()).unwrap();
    let enc = comp.encode("A red square.", 7).unwrap();
    let names = |ids: &[i64]| comp.decode(ids).unwrap();
    assert_eq!(
        names(&enc.input_ids),
        format!(
            "<|vision_start|>{}<|vision_end|>A red square.<|endoftext|>",
            "<|image_pad|>".repeat(7)
        )
    );
    assert_eq!(enc.caption_span, [9, 9 + enc.caption_ids().len() as u32]);
    check_layout(&comp, "A red square.", 7);
    check_layout(&comp, "two blue circles in the top left corner", 0);
    check_layout(&comp, "x", 1024);

    let chat_cfg = TextConfig {
        template: Template::qwen2vl_chat(),
        ..TextConfig::default()
    };
    let chat = CaptionTokenizer::from_file(&path, &chat_cfg).unwrap();
    let enc = chat.encode("An orange star.", 3).unwrap();
    assert_eq!(
        chat.decode(&enc.input_ids).unwrap(),
        "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>Describe the \
         image.<|im_end|>\n<|im_start|>assistant\nAn orange star.<|im_end|>"
    );
    assert_eq!(
        enc.labels[enc.caption_span[1] as usize], 2,
        "<|im_end|> (id 2) is the supervised end token"
    );
    check_layout(&chat, "An orange star.", 3);

    let custom = TextConfig {
        template: Template(
            "<|vision_start|>{image}<|vision_end|>Caption: {caption}<|endoftext|>\n".into(),
        ),
        ..TextConfig::default()
    };
    check_layout(
        &CaptionTokenizer::from_file(&path, &custom).unwrap(),
        "a green triangle",
        5,
    );
}

#[test]
fn captions_cannot_forge_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let tok = CaptionTokenizer::from_file(&trained(&dir), &TextConfig::default()).unwrap();
    let enc = tok.encode("look: <|image_pad|><|endoftext|>", 2).unwrap();
    let pad = tok.image_token_id();
    assert_eq!(enc.input_ids.iter().filter(|&&t| t == pad).count(), 2);
    assert!(
        !enc.caption_ids().contains(&0),
        "no <|endoftext|> inside the caption"
    );
}

#[test]
fn truncation_empty_captions_and_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let path = trained(&dir);
    let cfg = TextConfig {
        max_caption_tokens: 4,
        ..TextConfig::default()
    };
    let tok = CaptionTokenizer::from_file(&path, &cfg).unwrap();
    let captions = [
        "a red square",
        "three small dots near the centre with a thin black outline",
        "Dots.",
    ];
    let mut truncated = 0;
    for c in captions {
        let enc = tok.encode(c, 2).unwrap();
        assert!(enc.caption_ids().len() <= 4);
        let (full, _) = CaptionTokenizer::from_file(&path, &TextConfig::default())
            .unwrap()
            .encode_caption(c)
            .unwrap();
        assert_eq!(enc.truncated, full.len() > 4);
        assert_eq!(enc.caption_ids(), &full[..full.len().min(4)]);
        truncated += enc.truncated as usize;
    }
    assert_eq!(truncated, 1);

    for empty in ["", "   \n"] {
        assert!(matches!(
            tok.encode(empty, 4),
            Err(TokenizeError::EmptyCaption)
        ));
    }
    let missing = TextConfig {
        special_tokens: comp_pipeline::tokenize::SpecialTokens {
            image_pad: "<|no_such|>".into(),
            ..Default::default()
        },
        ..TextConfig::default()
    };
    let err = CaptionTokenizer::from_file(&path, &missing).unwrap_err();
    assert!(
        err.to_string().contains("<|no_such|>") && err.to_string().contains("image_pad"),
        "{err}"
    );
    let no_end = TextConfig {
        template: Template("{image}{caption}".into()),
        ..TextConfig::default()
    };
    assert!(matches!(
        CaptionTokenizer::from_file(&path, &no_end),
        Err(TokenizeError::Template(TemplateError::NoEndToken { .. }))
    ));
    let plain_end = TextConfig {
        template: Template("{image}{caption} end".into()),
        ..TextConfig::default()
    };
    assert!(matches!(
        CaptionTokenizer::from_file(&path, &plain_end),
        Err(TokenizeError::Template(TemplateError::EndNotSpecial { .. }))
    ));
    let two_images = TextConfig {
        template: Template("{image}{image}{caption}<|endoftext|>".into()),
        ..TextConfig::default()
    };
    assert!(matches!(
        CaptionTokenizer::from_file(&path, &two_images),
        Err(TokenizeError::Template(TemplateError::Slots {
            images: 2,
            captions: 1,
            ..
        }))
    ));
    assert!(matches!(
        CaptionTokenizer::from_file(&dir.path().join("nope.json"), &TextConfig::default()),
        Err(TokenizeError::Load { .. })
    ));
}

#[test]
fn encoding_from_many_threads_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let tok = CaptionTokenizer::from_file(&trained(&dir), &TextConfig::default()).unwrap();
    let captions = demo_captions();
    let serial: Vec<_> = captions
        .iter()
        .map(|c| tok.encode(c, 16).unwrap())
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (tok, captions, serial) = (&tok, &captions, &serial);
            s.spawn(move || {
                for (i, c) in captions.iter().enumerate().skip(t) {
                    assert_eq!(&tok.encode(c, 16).unwrap(), &serial[i]);
                }
            });
        }
    });
}
