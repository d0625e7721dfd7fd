#!/usr/bin/env node
// Writes oclif.manifest.json for a built holyship (run by `npm run build` after tsc, and by the
// benchmark's private build): see src/cli/manifest.ts. Usage: node scripts/oclif-manifest.mjs [ROOT]
// (ROOT: the package root holding package.json and dist/, default this checkout).
import * as path from 'node:path'
import {fileURLToPath, pathToFileURL} from 'node:url'

const root = path.resolve(process.argv[2] ?? fileURLToPath(new URL('..', import.meta.url)))
const {writeManifest} = await import(pathToFileURL(path.join(root, 'dist/src/cli/manifest.js')).href)
const ids = await writeManifest(root)
if (process.env.HOLYSHIP_MANIFEST_VERBOSE) process.stderr.write(`oclif.manifest.json: ${ids.length} commands\n`)
