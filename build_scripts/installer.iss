; Inno Setup 6 script for the CMS Agent (the contract: docs/CONTRACT.md).
; Built by `cargo xtask installer` (ISCC.exe, under Wine on Linux) as
;   ISCC /DAppVersion=X.Y.Z /DDistDir=<dist> installer.iss  ->  <dist>\cms_agent_setup-X.Y.Z.exe
; from the binaries `cargo xtask dist` put in <dist>\windows-x86_64\.
;
; What it does:
;   - installs cms_agent.exe and updater.exe, nothing else: config.json is never in the payload
;     (the agent writes it in its data folder, docs/CONTRACT.md), and neither is any test file;
;   - per-machine (admin, Program Files; the default) or per-user (no admin,
;     %LOCALAPPDATA%\Programs) install: /ALLUSERS or /CURRENTUSER on the command line, or the
;     dialog (PrivilegesRequiredOverridesAllowed);
;   - silent-capable: /VERYSILENT /SUPPRESSMSGBOXES [/LOG=file];
;   - before copying files (install and upgrade), stops a running agent (taskkill without /T:
;     Wine 8's taskkill rejects /T);
;   - after install: `cms_agent --enable-autostart`, then starts the agent, with
;     `--server URL` when given /SERVER=URL (and `--enrollment-token T` for /ENROLLMENTTOKEN=T);
;     /NOSTART skips starting it;
;   - uninstall: stops the agent, `cms_agent --disable-autostart`, removes the program files;
;     the data folder (config.json, logs) is kept unless the
;     uninstaller is given /PURGE, or the user says so when asked (interactive uninstall only);
;   - with /DSign (`cargo xtask installer --sign`, which also passes ISCC /Scms=<sign command>):
;     Authenticode-signs the setup exe, the uninstaller it embeds (also Setup's temporary
;     self-copy) and any of the two programs not signed yet.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef DistDir
  #define DistDir "..\dist"
#endif

#ifdef Sign
  #define SignFlags "signonce"
#else
  #define SignFlags ""
#endif

#define AppName "CMS Agent"
#define AgentExe "cms_agent.exe"
#define UpdaterExe "updater.exe"
; Data folder name under %PROGRAMDATA% (admin) or %LOCALAPPDATA% (per user): docs/CONTRACT.md.
#define DataFolder "CMSAgent"

[Setup]
AppId={{D1C8D198-37BA-40D3-874D-19DD92FF86D8}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=CMS Agent project
VersionInfoVersion={#AppVersion}
; {autopf} in effect; spelled out because Wine 8 cannot expand {userpf} (its
; SHGetKnownFolderPath lacks FOLDERID_UserProgramFiles), which broke per-user installs there.
DefaultDirName={code:DefaultInstallDir}
DisableProgramGroupPage=yes
PrivilegesRequired=admin
PrivilegesRequiredOverridesAllowed=commandline dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
OutputDir={#DistDir}
OutputBaseFilename=cms_agent_setup-{#AppVersion}
Compression=lzma2
SolidCompression=yes
WizardStyle=modern
UninstallDisplayIcon={app}\{#AgentExe}
UninstallDisplayName={#AppName}
SetupLogging=yes
; The agent is stopped by [Code] below (StopAgent), not by the Restart Manager.
CloseApplications=no
RestartApplications=no
#ifdef Sign
SignTool=cms
SignedUninstaller=yes
#endif

[Files]
; Only the two programs. Never add config.json or anything from outside dist\windows-x86_64.
Source: "{#DistDir}\windows-x86_64\{#AgentExe}"; DestDir: "{app}"; Flags: ignoreversion {#SignFlags}
Source: "{#DistDir}\windows-x86_64\{#UpdaterExe}"; DestDir: "{app}"; Flags: ignoreversion {#SignFlags}

[UninstallDelete]
; Left behind by an interrupted self-update (updater: rename to .old, then swap).
Type: files; Name: "{app}\*.old"

[Code]
const
  { `cms_agent --status` exit code when no instance runs (docs/CONTRACT.md). }
  ExitNoInstance = 3;

// Program Files per machine; %LOCALAPPDATA%\Programs per user (what userpf is on Windows).
function DefaultInstallDir(Param: String): String;
begin
  if IsAdminInstallMode() then
    Result := ExpandConstant('{commonpf}\{#AppName}')
  else
    Result := ExpandConstant('{localappdata}\Programs\{#AppName}');
end;

function AgentPath(): String;
begin
  Result := ExpandConstant('{app}\{#AgentExe}');
end;

{ Runs a program hidden, waits for it, logs and returns its exit code (-1: could not start). }
function RunHidden(const FileName, Params: String): Integer;
var
  Code: Integer;
begin
  if not Exec(FileName, Params, '', SW_HIDE, ewWaitUntilTerminated, Code) then
    Code := -1;
  Log(Format('%s %s -> exit code %d', [FileName, Params, Code]));
  Result := Code;
end;

{ Whether the command line has the switch Name (e.g. '/PURGE'), any case. }
function HasSwitch(const Name: String): Boolean;
var
  I: Integer;
begin
  Result := False;
  for I := 1 to ParamCount do
    if CompareText(ParamStr(I), Name) = 0 then
      Result := True;
end;

{ Stops the agent installed in the current app folder, if it runs. }
procedure StopAgent();
begin
  if not FileExists(AgentPath()) then
    Exit;
  if RunHidden(AgentPath(), '--status') = ExitNoInstance then
  begin
    Log('No running agent to stop.');
    Exit;
  end;
  { IPC STOP PLUGS IN HERE. docs/CONTRACT.md offers `--status` (used above) and `--force`,
    which asks the running instance over IPC to shut down gracefully but then goes on running
    itself with the new arguments, so it is no plain stop. When the agent gains a graceful stop
    (an IPC stop command, or a `--force` that can exit after the hand-over), call it here with
    RunHidden and keep the taskkill below only as the fallback for an agent that does not
    answer. Until then: terminate (the agent's data is written atomically; the lock is
    released by the OS when the process ends). }
  if RunHidden(ExpandConstant('{sys}\taskkill.exe'), '/F /IM {#AgentExe}') = 0 then
    Sleep(1500);
  RunHidden(ExpandConstant('{sys}\taskkill.exe'), '/F /IM {#UpdaterExe}');
end;

{ The agent's arguments for its first start: --server / --enrollment-token from /SERVER= and
  /ENROLLMENTTOKEN=. }
function AgentStartArgs(): String;
var
  Server, Token: String;
begin
  Result := '';
  Server := ExpandConstant('{param:SERVER}');
  Token := ExpandConstant('{param:ENROLLMENTTOKEN}');
  if Server <> '' then
    Result := '--server ' + AddQuotes(Server);
  if Token <> '' then
    Result := Result + ' --enrollment-token ' + AddQuotes(Token);
end;

procedure EnableAutostartAndStart();
var
  Code: Integer;
begin
  Code := RunHidden(AgentPath(), '--enable-autostart');
  if Code <> 0 then
    SuppressibleMsgBox(Format('Could not register the agent to start automatically (exit code %d).', [Code]),
      mbError, MB_OK, IDOK);
  if HasSwitch('/NOSTART') then
  begin
    Log('/NOSTART: not starting the agent.');
    Exit;
  end;
  if not Exec(AgentPath(), AgentStartArgs(), '', SW_HIDE, ewNoWait, Code) then
    SuppressibleMsgBox('Could not start the agent: ' + SysErrorMessage(Code), mbError, MB_OK, IDOK)
  else
    Log('Agent started.');
end;

function PrepareToInstall(var NeedsRestart: Boolean): String;
begin
  { Upgrade (or repair): the running agent must not hold the files being replaced. }
  StopAgent();
  Result := '';
end;

procedure CurStepChanged(CurStep: TSetupStep);
begin
  if CurStep = ssPostInstall then
    EnableAutostartAndStart();
end;

{ The agent's data folder for this install mode (docs/CONTRACT.md). }
function DataDir(): String;
begin
  if IsAdminInstallMode() then
    Result := ExpandConstant('{commonappdata}\{#DataFolder}')
  else
    Result := ExpandConstant('{localappdata}\{#DataFolder}');
end;

function WantPurge(): Boolean;
begin
  Result := HasSwitch('/PURGE');
  if not Result and not UninstallSilent() and DirExists(DataDir()) then
    Result := MsgBox('Also delete the agent''s data (configuration and logs) in ' + DataDir() + '?',
      mbConfirmation, MB_YESNO or MB_DEFBUTTON2) = IDYES;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
begin
  if CurUninstallStep = usUninstall then
  begin
    StopAgent();
    RunHidden(AgentPath(), '--disable-autostart');
  end;
  if (CurUninstallStep = usPostUninstall) and WantPurge() then
  begin
    Log('Purging the data folder ' + DataDir());
    DelTree(DataDir(), True, True, True);
  end;
end;
