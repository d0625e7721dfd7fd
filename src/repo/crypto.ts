/**
 * Authenticated encryption of an encrypted repository (FORMAT.md, "Encryption").
 *
 * A repository's master key is 64 random bytes: 32 for AES-256-GCM, 32 for HMAC-SHA256 (blob
 * ids). Everything sealed here is `nonce(12) | ciphertext | tag(16)`, with a fresh random
 * nonce per object and the object's encoding byte plus a label naming what it is as
 * additional authenticated data, so a sealed blob cannot be passed off as a pack header, an
 * index file or a manifest (or the other way round), nor its encoding byte flipped.
 *
 * The key material never leaves this class except through toBytes() (to wrap it in a key
 * file): it is kept in private fields and hidden from util.inspect and JSON.stringify.
 */
import {createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, randomFillSync} from 'node:crypto'
import {inspect} from 'node:util'

export const NONCE_LENGTH = 12
export const TAG_LENGTH = 16
/** bytes sealing adds to a payload: nonce + tag */
export const SEAL_OVERHEAD = NONCE_LENGTH + TAG_LENGTH
export const MASTER_KEY_LENGTH = 64

/** what a sealed object is; part of its additional authenticated data */
export type SealLabel = 'blob' | 'pack-header' | 'index' | 'snapshot' | 'key'

const LABELS: Record<SealLabel, Buffer> = {
  blob: Buffer.from('holyship:blob', 'ascii'),
  'pack-header': Buffer.from('holyship:pack-header', 'ascii'),
  index: Buffer.from('holyship:index', 'ascii'),
  snapshot: Buffer.from('holyship:snapshot', 'ascii'),
  key: Buffer.from('holyship:key', 'ascii'),
}

/** AAD = the object's encoding byte, then its label (ASCII) */
export function aad(encoding: number, label: SealLabel): Buffer {
  const l = LABELS[label]
  const out = Buffer.allocUnsafe(1 + l.length)
  out[0] = encoding
  l.copy(out, 1)
  return out
}

/** The ciphertext did not authenticate: modified, truncated, or sealed with another key. */
export class AuthenticationError extends Error {
  constructor(message = 'authentication failed') {
    super(message)
    this.name = 'AuthenticationError'
  }
}

/** AES-256-GCM with a random 12-byte nonce: returns nonce | ciphertext | tag. */
export function sealWith(key: Buffer, additional: Buffer, plain: Buffer): Buffer {
  const out = Buffer.allocUnsafe(NONCE_LENGTH + plain.length + TAG_LENGTH)
  sealWithInto(key, additional, plain, out, 0)
  return out
}

/**
 * sealWith, writing nonce | ciphertext | tag into `out` at `offset` (which must have room for
 * plain.length + SEAL_OVERHEAD bytes): no intermediate buffer for the result. Returns the
 * number of bytes written.
 */
export function sealWithInto(key: Buffer, additional: Buffer, plain: Buffer, out: Buffer, offset: number): number {
  const nonce = out.subarray(offset, offset + NONCE_LENGTH)
  randomFillSync(nonce)
  const c = createCipheriv('aes-256-gcm', key, nonce, {authTagLength: TAG_LENGTH})
  c.setAAD(additional)
  let at = offset + NONCE_LENGTH
  at += c.update(plain).copy(out, at)
  at += c.final().copy(out, at)
  at += c.getAuthTag().copy(out, at)
  return at - offset
}

/** Inverse of sealWith; throws AuthenticationError when the tag does not verify. */
export function openWith(key: Buffer, additional: Buffer, sealed: Buffer): Buffer {
  if (sealed.length < SEAL_OVERHEAD) throw new AuthenticationError(`too short to be sealed (${sealed.length} bytes)`)
  const nonce = sealed.subarray(0, NONCE_LENGTH)
  const tag = sealed.subarray(sealed.length - TAG_LENGTH)
  const d = createDecipheriv('aes-256-gcm', key, nonce, {authTagLength: TAG_LENGTH})
  d.setAAD(additional)
  d.setAuthTag(tag)
  const body = d.update(sealed.subarray(NONCE_LENGTH, sealed.length - TAG_LENGTH))
  try {
    const fin = d.final()
    return fin.length === 0 ? body : Buffer.concat([body, fin])
  } catch {
    throw new AuthenticationError()
  }
}

export class MasterKey {
  readonly #encrypt: Buffer
  readonly #mac: Buffer

  private constructor(material: Buffer) {
    if (material.length !== MASTER_KEY_LENGTH) throw new Error(`a master key has ${MASTER_KEY_LENGTH} bytes, not ${material.length}`)
    this.#encrypt = Buffer.from(material.subarray(0, 32))
    this.#mac = Buffer.from(material.subarray(32, 64))
  }

  static generate(): MasterKey {
    return new MasterKey(randomBytes(MASTER_KEY_LENGTH))
  }

  /** encryption key (32) | MAC/id key (32) */
  static fromBytes(material: Buffer): MasterKey {
    return new MasterKey(material)
  }

  /** the raw material, to wrap it in a key file; nothing else should need it */
  toBytes(): Buffer {
    return Buffer.concat([this.#encrypt, this.#mac])
  }

  /** a blob's id in an encrypted repository: HMAC-SHA256(MAC key, plaintext), lowercase hex */
  blobId(plain: Buffer): string {
    return createHmac('sha256', this.#mac).update(plain).digest('hex')
  }

  /**
   * The chunker's gear seed: the first 16 bytes of SHA-256("holyship-chunker-seed\0" | MAC
   * key), as 32 hex characters (the config of an encrypted repository has no seed: cut
   * points would otherwise reveal which known files the repository holds).
   */
  chunkerSeed(): string {
    return createHash('sha256').update('holyship-chunker-seed\0').update(this.#mac).digest().subarray(0, 16).toString('hex')
  }

  /** seal `plain` as an object whose first stored byte is `encoding` */
  seal(encoding: number, label: SealLabel, plain: Buffer): Buffer {
    return sealWith(this.#encrypt, aad(encoding, label), plain)
  }

  /** seal into `out` at `offset` (room for plain.length + SEAL_OVERHEAD); returns the bytes written */
  sealInto(encoding: number, label: SealLabel, plain: Buffer, out: Buffer, offset: number): number {
    return sealWithInto(this.#encrypt, aad(encoding, label), plain, out, offset)
  }

  open(encoding: number, label: SealLabel, sealed: Buffer): Buffer {
    return openWith(this.#encrypt, aad(encoding, label), sealed)
  }

  /** true when both hold the same material */
  equals(other: MasterKey): boolean {
    return this.#encrypt.equals(other.#encrypt) && this.#mac.equals(other.#mac)
  }

  toJSON(): string {
    return '[MasterKey]'
  }

  [inspect.custom](): string {
    return 'MasterKey [redacted]'
  }
}
