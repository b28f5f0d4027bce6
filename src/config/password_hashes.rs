//! Argon2 password hashes as configured (`microgateway hash-password`):
//! which are taken ([`parse`]: one rule for every `password_hash` of the
//! file), and what the checks of unknown user names cost, so that the time
//! an answer takes does not tell which names exist.
//!
//! A check runs with the parameters its hash carries, and every wrong
//! password (an unknown user's too, through a hash like the others) pays
//! them on the workers all callers share: the costs a hash may ask for are
//! bounded, so that one hash cannot ask for gigabytes or make each guess
//! hold a worker as long as it likes (m=8, t=2000000 takes some 8 s). At
//! the bounds a check costs some 30 times what one of a hash that
//! `hash-password` makes does (m=19456 (19 MiB), t=2, p=1, OWASP's argon2id
//! baseline); OWASP's other settings and RFC 9106 §4's second
//! recommendation (64 MiB, t=3, p=4) are within them.

use argon2::password_hash::phc::PasswordHash;

/// Most memory a hash may ask for, in KiB (256 MiB).
pub const MAX_M_COST: u32 = 256 * 1024;
/// Most passes over that memory.
pub const MAX_T_COST: u32 = 10;
/// Most lanes.
pub const MAX_P_COST: u32 = 8;
/// Most work, memory times passes (KiB): what a check's time grows with.
/// 1 GiB: 256 MiB four times, 100 MiB ten times.
pub const MAX_WORK: u64 = 1024 * 1024;

/// What a `password_hash` may be, for "allowed:" texts.
pub const ALLOWED: &str = "an Argon2 PHC string `$argon2id$v=19$m=…,t=…,p=…$salt$hash` \
     (`microgateway hash-password` makes m=19456,t=2,p=1) with m ≤ 262144 (KiB: 256 MiB), \
     t ≤ 10, p ≤ 8 and m·t ≤ 1048576";

/// Why a configured password hash is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashProblem {
    #[error("password_hash is not an argon2 PHC string")]
    NotArgon2,
    #[error(
        "password_hash asks for m={m}, t={t}, p={p}: more than one password check may cost \
         (every wrong password, and every unknown user, pays it)"
    )]
    TooCostly { m: u32, t: u32, p: u32 },
}

/// A configured password hash: an Argon2 PHC string with parameters
/// Argon2 takes, within the bounds above.
pub fn parse(text: &str) -> Result<PasswordHash, HashProblem> {
    let hash = PasswordHash::new(text)
        .ok()
        .filter(|h| h.algorithm.as_str().starts_with("argon2"))
        .ok_or(HashProblem::NotArgon2)?;
    let params = argon2::Params::try_from(&hash).map_err(|_| HashProblem::NotArgon2)?;
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    let work = u64::from(m) * u64::from(t);
    if m > MAX_M_COST || t > MAX_T_COST || p > MAX_P_COST || work > MAX_WORK {
        return Err(HashProblem::TooCostly { m, t, p });
    }
    Ok(hash)
}

/// The Argon2 parameters the most hashes have (ties: the costliest);
/// the default ones when none parse.
pub fn commonest_params<'h>(hashes: impl Iterator<Item = &'h PasswordHash>) -> argon2::Params {
    let mut counted: Vec<(argon2::Params, usize)> = Vec::new();
    for params in hashes.filter_map(|h| argon2::Params::try_from(h).ok()) {
        match counted.iter_mut().find(|(p, _)| *p == params) {
            Some((_, count)) => *count += 1,
            None => counted.push((params, 1)),
        }
    }
    let cost = |p: &argon2::Params| (p.m_cost(), p.t_cost(), p.p_cost());
    counted
        .into_iter()
        .max_by(|(a, n), (b, m)| n.cmp(m).then_with(|| cost(a).cmp(&cost(b))))
        .map_or_else(argon2::Params::default, |(params, _)| params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};

    fn hashed_with(m_cost: u32, t_cost: u32) -> String {
        let params = Params::new(m_cost, t_cost, 1, None).expect("params");
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pw")
            .expect("hash")
            .to_string()
    }

    /// What `hash-password` makes is taken; a hash past any bound, or
    /// whose parameters Argon2 refuses, is not.
    #[test]
    fn hashes_are_taken_within_the_bounds() {
        let made = Argon2::default()
            .hash_password(b"pw")
            .expect("hash")
            .to_string();
        assert!(parse(&made).is_ok(), "{made}");
        let written = |params: &str| {
            parse(&format!(
                "$argon2id$v=19${params}$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            ))
        };
        assert!(written("m=262144,t=4,p=8").is_ok());
        assert!(written("m=65536,t=3,p=4").is_ok());
        assert!(written("m=102400,t=10,p=1").is_ok());
        let costly = |m, t, p| Err(HashProblem::TooCostly { m, t, p });
        assert_eq!(written("m=8,t=2000000,p=1"), costly(8, 2_000_000, 1));
        assert_eq!(written("m=262145,t=1,p=1"), costly(262_145, 1, 1));
        assert_eq!(written("m=4194304,t=1,p=1"), costly(4_194_304, 1, 1));
        assert_eq!(written("m=65536,t=11,p=1"), costly(65_536, 11, 1));
        assert_eq!(written("m=65536,t=1,p=9"), costly(65_536, 1, 9));
        assert_eq!(written("m=262144,t=5,p=1"), costly(262_144, 5, 1));
        assert_eq!(written("m=1,t=1,p=1"), Err(HashProblem::NotArgon2));
        assert_eq!(
            parse("$pbkdf2$i=1$c2FsdA$aGFzaA"),
            Err(HashProblem::NotArgon2)
        );
        assert_eq!(parse("plain"), Err(HashProblem::NotArgon2));
    }

    /// An unknown user's check costs what most users' checks cost, in
    /// whatever order the users come: the timing tells no name apart
    /// from most of them.
    #[test]
    fn the_commonest_parameters_are_those_most_hashes_have() {
        let most = hashed_with(16, 2);
        let other = hashed_with(64, 1);
        let hashes: Vec<PasswordHash> = [&other, &most, &most]
            .iter()
            .map(|h| PasswordHash::new(h).expect("hash"))
            .collect();
        for order in [[0, 1, 2], [1, 2, 0], [2, 0, 1]] {
            let params = commonest_params(order.iter().map(|&i| &hashes[i]));
            assert_eq!((params.m_cost(), params.t_cost()), (16, 2));
        }
        // As many of each: the costlier.
        let tie: Vec<PasswordHash> = [&other, &most]
            .iter()
            .map(|h| PasswordHash::new(h).expect("hash"))
            .collect();
        let params = commonest_params(tie.iter().rev());
        assert_eq!((params.m_cost(), params.t_cost()), (64, 1));
        let params = commonest_params(tie.iter());
        assert_eq!((params.m_cost(), params.t_cost()), (64, 1));
    }
}
