//! The two things ringsocks reads from a certificate itself: the subject's common name (a
//! client certificate's user name) and the validity period (to warn about an expired
//! listener certificate). A small DER walker over RFC 5280's structure; rustls and webpki do
//! the verification, this never decides trust.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What ringsocks reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's last common name (OID 2.5.4.3), if any.
    pub common_name: Option<String>,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

/// A certificate's DER could not be walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct Malformed(&'static str);

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

impl CertInfo {
    /// Reads the subject and validity of a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertInfo, Malformed> {
        let (cert, _) = expect(der, SEQUENCE, "certificate")?;
        let (tbs, _) = expect(cert, SEQUENCE, "tbsCertificate")?;
        let mut rest = tbs;
        let (tag, _, after) = tlv(rest)?;
        if tag == VERSION {
            rest = after;
        }
        let (_serial, r) = any(rest)?;
        let (_signature, r) = expect(r, SEQUENCE, "signature")?;
        let (_issuer, r) = expect(r, SEQUENCE, "issuer")?;
        let (validity, r) = expect(r, SEQUENCE, "validity")?;
        let (subject, _) = expect(r, SEQUENCE, "subject")?;
        let (not_before, v) = time(validity)?;
        let (not_after, _) = time(v)?;
        Ok(CertInfo {
            common_name: common_name(subject)?,
            not_before,
            not_after,
        })
    }

    /// A warning when the certificate is not valid at `now` or expires within a week.
    pub fn validity_warning(&self, now: SystemTime) -> Option<String> {
        let day = |t: SystemTime| {
            let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            format!("{y:04}-{m:02}-{d:02}")
        };
        if now > self.not_after {
            Some(format!(
                "certificate expired on {}: clients will refuse it",
                day(self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "certificate is not valid before {}: clients will refuse it",
                day(self.not_before)
            ))
        } else if self.not_after.duration_since(now).unwrap_or_default()
            < Duration::from_secs(7 * 86_400)
        {
            Some(format!("certificate expires on {}", day(self.not_after)))
        } else {
            None
        }
    }
}

/// One TLV: tag, contents, and what follows.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), Malformed> {
    let (&tag, rest) = input.split_first().ok_or(Malformed("truncated"))?;
    let (&first, rest) = rest.split_first().ok_or(Malformed("truncated"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(Malformed("bad length"));
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(Malformed("truncated"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect<'a>(
    input: &'a [u8],
    want: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), Malformed> {
    let (tag, body, rest) = tlv(input)?;
    if tag != want {
        return Err(Malformed(what));
    }
    Ok((body, rest))
}

fn any(input: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let (_, body, rest) = tlv(input)?;
    Ok((body, rest))
}

/// The last CN in a Name (RDNSequence): the most specific one.
fn common_name(mut name: &[u8]) -> Result<Option<String>, Malformed> {
    let mut cn = None;
    while !name.is_empty() {
        let (mut rdn, rest) = expect(name, SET, "name")?;
        name = rest;
        while !rdn.is_empty() {
            let (attr, r) = expect(rdn, SEQUENCE, "attribute")?;
            rdn = r;
            let (oid, value) = expect(attr, OID, "attribute type")?;
            if oid == COMMON_NAME {
                // UTF8String, PrintableString, IA5String, T61String: all read as UTF-8 here.
                let (_, text, _) = tlv(value)?;
                cn = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Ok(cn)
}

fn time(input: &[u8]) -> Result<(SystemTime, &[u8]), Malformed> {
    let (tag, body, rest) = tlv(input)?;
    let digits = |s: &[u8]| -> Result<i64, Malformed> {
        s.iter().try_fold(0i64, |a, &c| {
            if c.is_ascii_digit() {
                Ok(a * 10 + (c - b'0') as i64)
            } else {
                Err(Malformed("time"))
            }
        })
    };
    let (year, r) = match (tag, body.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&body[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &body[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&body[..4])?, &body[4..]),
        _ => return Err(Malformed("time")),
    };
    if r[10] != b'Z' {
        return Err(Malformed("time"));
    }
    let (mon, day) = (digits(&r[0..2])?, digits(&r[2..4])?);
    let (h, m, s) = (digits(&r[4..6])?, digits(&r[6..8])?, digits(&r[8..10])?);
    let days = days_from_civil(year, mon, day);
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    let t = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    };
    Ok((t, rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ringsocks tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_common_name_and_validity() {
        let info = CertInfo::parse(&cert("alice", (2049, 12, 31))).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("alice"));
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(info.not_before), 1_577_923_200); // 2020-01-02T00:00:00Z
        assert_eq!(secs(info.not_after), 2_524_521_600); // 2049-12-31 (UTCTime)
                                                         // GeneralizedTime from 2050 on.
        let info = CertInfo::parse(&cert("bob", (2051, 3, 1))).unwrap();
        assert_eq!(secs(info.not_after), 2_561_241_600);
        assert_eq!(info.validity_warning(SystemTime::now()), None);
    }

    #[test]
    fn warns_about_expired_certificates() {
        let info = CertInfo::parse(&cert("old", (2021, 6, 30))).unwrap();
        let w = info.validity_warning(SystemTime::now()).unwrap();
        assert!(w.contains("expired on 2021-06-30"), "{w}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = cert("x", (2049, 1, 1));
        for n in 0..good.len() {
            let _ = CertInfo::parse(&good[..n]);
        }
        assert!(CertInfo::parse(&[]).is_err());
        assert!(CertInfo::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1000, 0, 1, 59, 365, 10_957, 20_000, 30_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
