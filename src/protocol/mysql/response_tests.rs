use super::*;

fn ok(status: u16) -> Vec<u8> {
    let mut p = vec![0x00, 1, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

fn eof(status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p
}

fn ok_terminator(status: u16) -> Vec<u8> {
    let mut p = ok(status);
    p[0] = 0xfe;
    p
}

const COLDEF: &[u8] = b"\x03def\x04shop\x01t\x01t\x01c\x01c\x0c\x2d\x00\x00\x01\x00\x00\xfd\x00\x00\x00\x00\x00";

/// Feed packets; every one but the last must be Continue; returns the last event.
fn run(t: &mut Tracker, packets: &[Vec<u8>]) -> Event {
    let (last, before) = packets.split_last().expect("packets");
    for (i, p) in before.iter().enumerate() {
        assert_eq!(t.feed(p), Event::Continue, "packet {i}: {p:02x?}");
    }
    t.feed(last)
}

fn done(e: Event) -> Outcome {
    match e {
        Event::Done(o) => o,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn ok_and_err_replies() {
    let mut t = Tracker::new(Reply::ResultSets, false, false);
    assert_eq!(done(t.feed(&ok(status::AUTOCOMMIT))).status, Some(status::AUTOCOMMIT));
    let mut t = Tracker::new(Reply::ResultSets, false, false);
    let err = b"\xff\x7a\x04#42S02Table 'shop.nope' doesn't exist";
    let o = done(t.feed(err));
    assert_eq!((o.error, o.status), (Some(1146), None));
    assert_eq!(parse_err(err).unwrap().sqlstate, "42S02");
}

#[test]
fn result_sets_with_and_without_deprecate_eof() {
    let row = b"\x01a".to_vec();
    let mut t = Tracker::new(Reply::ResultSets, false, false);
    let o = done(run(&mut t, &[vec![1], COLDEF.to_vec(), eof(2), row.clone(), row.clone(), eof(status::IN_TRANS)]));
    assert_eq!(o.status, Some(status::IN_TRANS));
    let mut t = Tracker::new(Reply::ResultSets, true, false);
    let o = done(run(&mut t, &[vec![2], COLDEF.to_vec(), COLDEF.to_vec(), row.clone(), ok_terminator(2)]));
    assert_eq!(o.status, Some(2));
    // A row whose first value is NULL (0xFB) or starts with a 0xFE length is not the end.
    let mut t = Tracker::new(Reply::ResultSets, true, false);
    let mut big_row = vec![0xfe];
    big_row.resize(MAX_PAYLOAD, b'x');
    let o = done(run(&mut t, &[vec![1], COLDEF.to_vec(), vec![0xfb], big_row, ok_terminator(2)]));
    assert_eq!(o.status, Some(2));
}

#[test]
fn multi_results_end_at_the_last_one_and_errors_end_everything() {
    let more = status::MORE_RESULTS_EXISTS | status::AUTOCOMMIT;
    let mut t = Tracker::new(Reply::ResultSets, false, false);
    let o = done(run(&mut t, &[ok(more), vec![1], COLDEF.to_vec(), eof(2), b"\x011".to_vec(), eof(more), ok(2)]));
    assert_eq!(o.status, Some(2));
    let mut t = Tracker::new(Reply::ResultSets, false, false);
    let o = done(run(&mut t, &[ok(more), vec![1], COLDEF.to_vec(), eof(2), b"\xff\x25\x05#70100Query execution was interrupted".to_vec()]));
    assert_eq!(o.error, Some(1317));
}

#[test]
fn prepare_replies_give_the_statement_id() {
    let prepare_ok = |id: u32, columns: u16, params: u16| {
        let mut p = vec![0];
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&columns.to_le_bytes());
        p.extend_from_slice(&params.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        p
    };
    let mut t = Tracker::new(Reply::Prepare, false, false);
    let o = done(run(&mut t, &[prepare_ok(7, 1, 2), COLDEF.to_vec(), COLDEF.to_vec(), eof(2), COLDEF.to_vec(), eof(2)]));
    assert_eq!((o.statement_id, o.params), (Some(7), 2));
    let mut t = Tracker::new(Reply::Prepare, true, false);
    let o = done(run(&mut t, &[prepare_ok(8, 1, 2), COLDEF.to_vec(), COLDEF.to_vec(), COLDEF.to_vec()]));
    assert_eq!(o.statement_id, Some(8));
    for deprecate in [false, true] {
        let mut t = Tracker::new(Reply::Prepare, deprecate, false);
        assert_eq!(done(t.feed(&prepare_ok(9, 0, 0))).statement_id, Some(9), "BEGIN has no definitions");
        let mut t = Tracker::new(Reply::Prepare, deprecate, false);
        let mut packets = vec![prepare_ok(10, 0, 1), COLDEF.to_vec()];
        if !deprecate {
            packets.push(eof(2));
        }
        assert_eq!(done(run(&mut t, &packets)).statement_id, Some(10));
    }
}

#[test]
fn load_data_local_hands_over_to_the_client() {
    let mut t = Tracker::new(Reply::ResultSets, false, false);
    assert_eq!(t.feed(b"\xfb/tmp/data.csv"), Event::ClientData { until_empty: true });
    assert_eq!(done(t.feed(&ok(2))).status, Some(2));
}

#[test]
fn cursors_end_after_the_definitions_and_fetch_reads_rows() {
    let mut t = Tracker::new(Reply::ResultSets, false, false);
    let o = done(run(&mut t, &[vec![1], COLDEF.to_vec(), eof(status::CURSOR_EXISTS | 2)]));
    assert_eq!(o.status, Some(status::CURSOR_EXISTS | 2));
    let mut t = Tracker::new(Reply::Rows, false, false);
    let o = done(run(&mut t, &[b"\x00\x00\x01a".to_vec(), eof(0x80 | 2)]));
    assert_eq!(o.status, Some(0x82));
}

#[test]
fn single_packet_replies() {
    let mut t = Tracker::new(Reply::Eof, true, false);
    assert_eq!(done(t.feed(&[0xfe, 0, 0, 2, 0])).status, Some(2), "COM_SET_OPTION answers with an EOF");
    let mut t = Tracker::new(Reply::Any, false, false);
    assert_eq!(done(t.feed(b"Uptime: 5  Threads: 1")).status, None);
    let mut t = Tracker::new(Reply::FieldList, false, false);
    assert_eq!(done(run(&mut t, &[COLDEF.to_vec(), COLDEF.to_vec(), eof(2)])).status, Some(2));
}

#[test]
fn change_user_authentication() {
    let mut t = Tracker::new(Reply::Auth, false, false);
    assert_eq!(t.feed(b"\xfemysql_native_password\0abcdefghijklmnopqrst\0"), Event::ClientData { until_empty: false });
    assert_eq!(done(t.feed(&ok(2))).status, Some(2));
    let mut t = Tracker::new(Reply::Auth, false, false);
    assert_eq!(t.feed(&[0x01, 0x03]), Event::Continue, "fast auth success");
    assert_eq!(done(t.feed(&ok(2))).status, Some(2));
    let mut t = Tracker::new(Reply::Auth, false, false);
    assert_eq!(t.feed(&[0x01, 0x04]), Event::ClientData { until_empty: false }, "full auth");
}

#[test]
fn session_tracking_reports_the_schema() {
    // OK after `USE mysql` with SESSION_TRACK: info "", state block with SCHEMA "mysql".
    let mut p = vec![0x00, 0, 0];
    p.extend_from_slice(&(status::SESSION_STATE_CHANGED | 2).to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p.push(0);
    p.extend_from_slice(&[8, 1, 6, 5, b'm', b'y', b's', b'q', b'l']);
    let ok = parse_ok(&p, true).unwrap();
    assert_eq!(ok.schema.as_deref(), Some("mysql"));
    assert_eq!(parse_ok(&p, false).unwrap().schema, None, "without session tracking the rest is info text");
    let mut t = Tracker::new(Reply::Ok, false, true);
    assert_eq!(done(t.feed(&p)).schema.as_deref(), Some("mysql"));
    for cut in 0..p.len() {
        let _ = parse_ok(&p[..cut], true);
    }
}
