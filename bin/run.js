#!/usr/bin/env node
import {fileURLToPath} from 'node:url'
import {execute} from '@oclif/core'
import {cliLoadOptions} from '../dist/src/cli/manifest.js'

// the oclif manifest only while it matches the build (src/cli/manifest.ts)
await execute({loadOptions: await cliLoadOptions(fileURLToPath(new URL('..', import.meta.url)))})
