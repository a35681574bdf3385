//! The Shakespeare corpus compiled into the binary (`builtin:shakespeare`), so that the
//! default pipeline runs from anywhere. 27 plays, public domain (see pipelines/corpus/README.md).

/// (file name, text) in sorted file-name order.
pub const SHAKESPEARE: &[(&str, &str)] = &[
    ("a-midsummer-night-s-dream.txt", include_str!("../../pipelines/corpus/shakespeare/a-midsummer-night-s-dream.txt")),
    ("a-winter-s-tale.txt", include_str!("../../pipelines/corpus/shakespeare/a-winter-s-tale.txt")),
    ("all-s-well-that-ends-well.txt", include_str!("../../pipelines/corpus/shakespeare/all-s-well-that-ends-well.txt")),
    ("antony-and-cleopatra.txt", include_str!("../../pipelines/corpus/shakespeare/antony-and-cleopatra.txt")),
    ("as-you-like-it.txt", include_str!("../../pipelines/corpus/shakespeare/as-you-like-it.txt")),
    ("coriolanus.txt", include_str!("../../pipelines/corpus/shakespeare/coriolanus.txt")),
    ("cymbeline.txt", include_str!("../../pipelines/corpus/shakespeare/cymbeline.txt")),
    ("hamlet.txt", include_str!("../../pipelines/corpus/shakespeare/hamlet.txt")),
    ("julius-caesar.txt", include_str!("../../pipelines/corpus/shakespeare/julius-caesar.txt")),
    ("king-lear.txt", include_str!("../../pipelines/corpus/shakespeare/king-lear.txt")),
    ("love-s-labours-lost.txt", include_str!("../../pipelines/corpus/shakespeare/love-s-labours-lost.txt")),
    ("macbeth.txt", include_str!("../../pipelines/corpus/shakespeare/macbeth.txt")),
    ("measure-for-measure.txt", include_str!("../../pipelines/corpus/shakespeare/measure-for-measure.txt")),
    ("much-ado-about-nothing.txt", include_str!("../../pipelines/corpus/shakespeare/much-ado-about-nothing.txt")),
    ("othello.txt", include_str!("../../pipelines/corpus/shakespeare/othello.txt")),
    ("pericles.txt", include_str!("../../pipelines/corpus/shakespeare/pericles.txt")),
    ("romeo-and-juliet.txt", include_str!("../../pipelines/corpus/shakespeare/romeo-and-juliet.txt")),
    ("the-comedy-of-errors.txt", include_str!("../../pipelines/corpus/shakespeare/the-comedy-of-errors.txt")),
    ("the-merchant-of-venice.txt", include_str!("../../pipelines/corpus/shakespeare/the-merchant-of-venice.txt")),
    (
        "the-merry-wives-of-windsor.txt",
        include_str!("../../pipelines/corpus/shakespeare/the-merry-wives-of-windsor.txt"),
    ),
    ("the-taming-of-the-shrew.txt", include_str!("../../pipelines/corpus/shakespeare/the-taming-of-the-shrew.txt")),
    ("the-tempest.txt", include_str!("../../pipelines/corpus/shakespeare/the-tempest.txt")),
    ("timon-of-athens.txt", include_str!("../../pipelines/corpus/shakespeare/timon-of-athens.txt")),
    ("titus-andronicus.txt", include_str!("../../pipelines/corpus/shakespeare/titus-andronicus.txt")),
    ("troilus-and-cressida.txt", include_str!("../../pipelines/corpus/shakespeare/troilus-and-cressida.txt")),
    ("twelfth-night.txt", include_str!("../../pipelines/corpus/shakespeare/twelfth-night.txt")),
    ("two-gentlemen-of-verona.txt", include_str!("../../pipelines/corpus/shakespeare/two-gentlemen-of-verona.txt")),
];
