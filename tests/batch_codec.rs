//! The record batch codec: everything built decodes to what went in, and no
//! single damaged byte gets past the checks.

use bytes::Bytes;
use proptest::prelude::*;
use weir::log::{Batch, BatchBuilder, BatchError, Record, RecordHeader};

fn optional_bytes() -> impl Strategy<Value = Option<Bytes>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from))
}

fn record() -> impl Strategy<Value = Record> {
    let header = ("[a-z]{0,8}", optional_bytes()).prop_map(|(key, value)| RecordHeader { key, value });
    (any::<i64>(), optional_bytes(), optional_bytes(), prop::collection::vec(header, 0..4))
        .prop_map(|(timestamp_ms, key, value, headers)| Record { offset: 0, timestamp_ms, key, value, headers })
}

fn build(records: &[Record], producer: Option<(i64, i16, i32)>) -> Batch {
    let mut builder = BatchBuilder::new();
    if let Some((id, epoch, sequence)) = producer {
        builder = builder.producer(id, epoch, sequence);
    }
    for record in records {
        builder.push(record);
    }
    builder.build().expect("non-empty batch builds")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn round_trips(
        records in prop::collection::vec(record(), 1..20),
        producer in prop::option::of((any::<i64>(), any::<i16>(), any::<i32>())),
        base_offset in 0u64..u64::MAX / 2,
        term in any::<u64>(),
    ) {
        let batch = build(&records, producer).placed(base_offset, term, 9);
        let decoded = Batch::decode(batch.as_bytes().clone()).expect("a built batch decodes");
        let header = decoded.header();
        prop_assert_eq!(header.base_offset, base_offset);
        prop_assert_eq!(header.term, term);
        prop_assert_eq!(header.raft_index, 9);
        prop_assert_eq!(header.record_count as usize, records.len());
        prop_assert_eq!(header.max_timestamp_ms, records.iter().map(|r| r.timestamp_ms).max().unwrap());
        if let Some((id, epoch, sequence)) = producer {
            prop_assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (id, epoch, sequence));
        }
        let got: Vec<Record> = decoded.records().collect::<Result<_, _>>().expect("records decode");
        let want: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, r)| Record { offset: base_offset + i as u64, ..r.clone() })
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn any_flipped_byte_is_detected(
        records in prop::collection::vec(record(), 1..6),
        mask in 1u8..=255,
    ) {
        let batch = build(&records, Some((7, 1, 0))).placed(1_000, 3, 12);
        let bytes = batch.as_bytes().to_vec();
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= mask;
            let result = Batch::decode(Bytes::from(damaged.clone()));
            prop_assert!(result.is_err(), "flip {mask:#04x} at byte {position} of {} went unnoticed", bytes.len());
            // The cheaper check used on the read path catches it too.
            prop_assert!(Batch::from_storage(Bytes::from(damaged)).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(batch) = Batch::decode(Bytes::from(bytes)) {
            prop_assert!(batch.records().all(|r| r.is_ok()));
        }
    }
}

#[test]
fn truncated_batches_are_rejected() {
    let records = vec![Record { timestamp_ms: 5, value: Some(Bytes::from_static(b"hello")), ..Record::default() }];
    let bytes = build(&records, None).into_bytes();
    for len in 0..bytes.len() {
        let err = Batch::decode(bytes.slice(..len)).expect_err("a prefix is not a batch");
        assert!(matches!(err, BatchError::Truncated { .. }), "prefix of {len}: {err:?}");
    }
}

#[test]
fn empty_batches_are_refused() {
    assert_eq!(BatchBuilder::new().build(), Err(BatchError::Empty));
}

#[test]
fn a_valid_crc_over_inconsistent_records_is_still_refused() {
    // Forge a batch whose header claims two records but whose body holds
    // one, with both CRCs recomputed: structure checks must catch it.
    let records = vec![Record { timestamp_ms: 1, ..Record::default() }];
    let mut bytes = build(&records, None).into_bytes().to_vec();
    bytes[40..44].copy_from_slice(&2u32.to_le_bytes());
    let head = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), &bytes[28..74]);
    bytes[24..28].copy_from_slice(&head.to_le_bytes());
    let err = Batch::decode(Bytes::from(bytes)).expect_err("record count mismatch");
    assert!(matches!(err, BatchError::Malformed(_)), "{err:?}");
}

/// Rewrites a built batch's header field at `at` and re-seals both CRCs, so
/// only the field's meaning can make it invalid.
fn resealed(batch: &Batch, edit: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut bytes = batch.as_bytes().to_vec();
    edit(&mut bytes);
    let body_crc = crc32c::crc32c(&bytes[74..]);
    bytes[36..40].copy_from_slice(&body_crc.to_le_bytes());
    let head_crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), &bytes[28..74]);
    bytes[24..28].copy_from_slice(&head_crc.to_le_bytes());
    Bytes::from(bytes)
}

/// Before: a batch with a compression or transaction bit weir does not
/// define was stored and served as plain records.
#[test]
fn attribute_bits_weir_does_not_define_are_refused() {
    let batch = build(&[Record { value: Some(Bytes::from_static(b"v")), ..Record::default() }], None);
    assert!(Batch::decode(resealed(&batch, |_| {})).is_ok(), "resealing alone keeps it valid");
    for bit in 0..16 {
        let flagged = resealed(&batch, |b| b[34..36].copy_from_slice(&(1u16 << bit).to_le_bytes()));
        let error = Batch::decode(flagged).unwrap_err();
        assert!(matches!(&error, BatchError::Malformed(m) if m.contains("attributes")), "bit {bit}: {error}");
    }
    let reserved = resealed(&batch, |b| b[33] = 1);
    assert!(Batch::decode(reserved).is_err(), "the reserved byte must be 0");
    // The first record's attributes byte follows its one-byte length.
    let record_flagged = resealed(&batch, |b| b[75] = 0x04);
    let error = Batch::decode(record_flagged).unwrap_err();
    assert!(matches!(&error, BatchError::Malformed(m) if m.contains("attributes")), "{error}");
}
