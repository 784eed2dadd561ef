import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parse } from 'smol-toml'
import { TomlLocator } from './toml-locations.js'

const SOURCE = [
  'app = "demo"',                         // 1
  '# a comment = not a key',              // 2
  'kill_timeout = 5',                     // 3
  '',                                     // 4
  '[[services]]',                         // 5
  '  internal_port = 8080',               // 6
  '  [[services.ports]]',                 // 7
  '    port = 80',                        // 8
  '  [[services.ports]]',                 // 9
  '    port = "443"',                     // 10
  '',                                     // 11
  '[[services]]',                         // 12
  '  internal_port = 9090',               // 13
  '  processes = [',                      // 14
  '    "web",   # [not.a.header]',        // 15
  '    "worker",',                        // 16
  '  ]',                                  // 17
  '  [services.concurrency]',             // 18
  '    hard_limit = "lots"',              // 19
  '  [[services.ports]]',                 // 20
  '    start_port = 1000',                // 21
  '',                                     // 22
  '[env]',                                // 23
  '  MOTD = """',                         // 24
  'line = one',                           // 25
  '[fake.header]',                        // 26
  '"""',                                  // 27
  '  "quoted.key" = "x"',                 // 28
  '  http_options.response.pristine = 1', // 29
  '',                                     // 30
  '[http_service]',                       // 31
  '  tls_options = { alpn = ["h2"], versions = ["TLSv1.2"] }', // 32
].join('\n')

test('the locator finds lines for keys in arrays of tables, nested tables and dotted keys', () => {
  parse(SOURCE) // the sample is valid TOML
  const locator = new TomlLocator(SOURCE)
  assert.equal(locator.lineOf(['app']), 1)
  assert.equal(locator.lineOf(['kill_timeout']), 3)
  assert.equal(locator.lineOf(['services', 0]), 5)
  assert.equal(locator.lineOf(['services', 0, 'internal_port']), 6)
  assert.equal(locator.lineOf(['services', 0, 'ports', 1, 'port']), 10)
  assert.equal(locator.lineOf(['services', 1, 'internal_port']), 13)
  assert.equal(locator.lineOf(['services', 1, 'processes', 1]), 14, 'inside a multi-line array: the key line')
  assert.equal(locator.lineOf(['services', 1, 'concurrency', 'hard_limit']), 19, '[services.concurrency] belongs to the last [[services]]')
  assert.equal(locator.lineOf(['services', 1, 'ports', 0, 'start_port']), 21, 'port indexes restart for each service')
  assert.equal(locator.lineOf(['env', 'quoted.key']), 28, 'quoted keys, after a multi-line string holding a fake header')
  assert.equal(locator.lineOf(['env', 'http_options', 'response', 'pristine']), 29)
  assert.equal(locator.lineOf(['fake', 'header']), undefined, 'text inside a multi-line string is not a header')
  assert.equal(locator.lineOf(['not', 'a', 'header']), undefined, 'comments are not headers')
  assert.equal(locator.lineOf(['http_service', 'tls_options', 'versions', 0]), 32, 'inline tables resolve to their key')
  assert.equal(locator.lineOf(['services', 7, 'x']), 5, 'an unknown index falls back to the nearest ancestor')
  assert.equal(locator.lineOf(['nowhere']), undefined)
})
