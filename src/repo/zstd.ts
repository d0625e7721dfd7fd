import {Compressor, Decompressor} from 'zstd-napi'

// one compressor per level, reused: creating a zstd context per chunk costs more than small chunks
const compressors = new Map<number, Compressor>()
let decompressor: Decompressor | undefined

export function compressChunk(plain: Buffer, level: number): Buffer {
  let c = compressors.get(level)
  if (!c) {
    c = new Compressor()
    c.setParameters({compressionLevel: level, checksumFlag: true})
    compressors.set(level, c)
  }
  return c.compress(plain)
}

export function decompressChunk(z: Buffer, expectedLength: number): Buffer {
  decompressor ??= new Decompressor()
  const out = decompressor.decompress(z)
  if (out.length !== expectedLength) throw new Error(`decompressed to ${out.length} bytes, expected ${expectedLength}`)
  return out
}
