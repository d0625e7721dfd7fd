#!/usr/bin/env node
import module from 'node:module'
import {fileURLToPath} from 'node:url'

// Node 22+: V8 keeps the compiled code of holyship and its dependencies between runs
module.enableCompileCache?.()
// @oclif/core checks the Node version against its own engines (>= 18) with semver, which takes
// ~30 ms to load; package.json asks for a newer Node than that, so the check can never fire
const engineWarning = process.env.OCLIF_DISABLE_ENGINE_WARNING
process.env.OCLIF_DISABLE_ENGINE_WARNING = 'true'
const {execute} = await import('@oclif/core')
if (engineWarning === undefined) delete process.env.OCLIF_DISABLE_ENGINE_WARNING
else process.env.OCLIF_DISABLE_ENGINE_WARNING = engineWarning

// the oclif manifest only while it matches the build (src/cli/manifest.ts)
const {cliLoadOptions} = await import('../dist/src/cli/manifest.js')
await execute({loadOptions: await cliLoadOptions(fileURLToPath(new URL('..', import.meta.url)))})
